import json
import shutil

import pytest
import torch

from instant3d import CheckpointError, Instant3DPipeline
from instant3d.io.checkpoint import load_model, save_checkpoint
from instant3d.models.model import Instant3DModel


def test_round_trip_is_bit_exact(tmp_path, tiny_checkpoint):
    model, meta = load_model(tiny_checkpoint)
    again = save_checkpoint(model, tmp_path / "copy", text_encoder_path=str(tiny_checkpoint / "text_encoder"))
    reloaded, _ = load_model(again)
    a, b = model.state_dict(), reloaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert reloaded.config == model.config


def test_pipelines_from_a_copy_give_identical_triplanes(tmp_path, tiny_checkpoint):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_checkpoint, copy)
    a = Instant3DPipeline.from_pretrained(tiny_checkpoint, device="cpu")("a red cube", seed=3)
    b = Instant3DPipeline.from_pretrained(copy, device="cpu")("a red cube", seed=3)
    assert torch.equal(a.triplane, b.triplane)


def test_relative_text_encoder_reference(tmp_path, tiny_checkpoint):
    shutil.copytree(tiny_checkpoint / "text_encoder", tmp_path / "shared-clip")
    model, _ = load_model(tiny_checkpoint)
    save_checkpoint(model, tmp_path / "ckpts" / "m", text_encoder_path="../../shared-clip")
    pipe = Instant3DPipeline.from_pretrained(tmp_path / "ckpts" / "m", device="cpu")
    assert pipe("a cube").triplane.shape[0] == 1


def test_config_that_does_not_match_the_weights(tmp_path, tiny_checkpoint):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, bad)
    meta = json.loads((bad / "config.json").read_text())
    meta["model"]["generator"]["triplane_channels"] = 4
    (bad / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"does not match its config.json: .*conv_out.weight has shape"):
        load_model(bad)


@pytest.mark.parametrize("keep", [10, 1000, -100])
def test_truncated_weights(tmp_path, tiny_checkpoint, keep):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[:keep] if keep > 0 else data[:keep])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(bad)


def test_missing_files_and_pickles_are_refused(tmp_path, tiny_checkpoint):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nothing")
    bad = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, bad)
    (bad / "model.safetensors").unlink()
    torch.save({}, bad / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="never loaded"):
        load_model(bad)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(bad)


def test_save_replaces_an_existing_checkpoint_atomically(tmp_path, tiny_checkpoint):
    model, _ = load_model(tiny_checkpoint)
    target = tmp_path / "ckpt"
    save_checkpoint(model, target, text_encoder_path="x")
    with torch.no_grad():
        model.field.layers[0].bias.add_(1.0)
    save_checkpoint(model, target, text_encoder_path="x")
    reloaded, _ = load_model(target)
    assert torch.equal(reloaded.field.layers[0].bias, model.field.layers[0].bias)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp or backup folders left


def test_failed_save_leaves_the_old_checkpoint(tmp_path, tiny_checkpoint, monkeypatch):
    model, _ = load_model(tiny_checkpoint)
    target = tmp_path / "ckpt"
    save_checkpoint(model, target, text_encoder_path="x")
    before = (target / "model.safetensors").read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("instant3d.io.checkpoint.save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(Instant3DModel(model.config), target, text_encoder_path="x")
    assert (target / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_atomic_folders_end_up_with_ordinary_permissions(tmp_path):
    import os
    import stat

    from instant3d.io.files import atomic_folder

    umask = os.umask(0o022)
    try:
        with atomic_folder(tmp_path / "made") as tmp:
            (tmp / "sub").mkdir()
            (tmp / "sub" / "weights.bin").write_bytes(b"x")
            os.chmod(tmp / "sub" / "weights.bin", 0o600)  # as some writers leave them
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "made").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "made" / "sub").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "made" / "sub" / "weights.bin").stat().st_mode) == 0o644


def test_a_checkpoint_moves_to_bilinear_upsampling_with_its_weights_and_the_mode_is_saved(tmp_path, tiny_checkpoint):
    model, _ = load_model(tiny_checkpoint)
    stages = len(model.config.generator.block_out_channels)
    smooth = model.with_upsampling(["bilinear"] * stages)
    a, b = model.state_dict(), smooth.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    reloaded, _ = load_model(save_checkpoint(smooth, tmp_path / "smooth",
                                             text_encoder_path=str(tiny_checkpoint / "text_encoder")))
    assert reloaded.config.generator.upsampling == ("bilinear",) * stages
    tokens = torch.randn(1, model.config.text.num_tokens, model.config.text.token_dim)
    pooled, z = torch.randn(1, model.config.text.pooled_dim), torch.randn(1, model.config.generator.z_dim)
    with torch.no_grad():
        assert torch.equal(reloaded.generator(tokens, pooled, z), smooth.eval().generator(tokens, pooled, z))
        assert not torch.allclose(model.generator(tokens, pooled, z), smooth.generator(tokens, pooled, z))


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_decoder_stage_upsampling_against_an_independent_reference(mode):
    """A stage whose conv is the identity doubles a ramp: nearest repeats each texel twice (steps), bilinear puts
    the new texels a quarter of the way between their neighbours (a ramp again, away from the edges)."""
    from instant3d.config import preset_config
    from instant3d.models.generator import DecoderStage

    cfg = preset_config("tiny").generator
    stage = DecoderStage(4, 4, 1, 2, False, cfg, 8, upsampling=mode)
    with torch.no_grad():
        stage.upsample.conv.weight.zero_()
        stage.upsample.conv.bias.zero_()
        for c in range(4):
            stage.upsample.conv.weight[c, c, 1, 1] = 1.0
        ramp = torch.arange(6, dtype=torch.float).expand(1, 4, 6, 6).contiguous()
        out = stage.double(ramp)[0, 0, 0].tolist()
    expected = ([v for v in range(6) for _ in range(2)] if mode == "nearest"
                else [0.0] + [v / 2 - 0.25 for v in range(1, 11)] + [5.0])
    assert out == pytest.approx(expected)
