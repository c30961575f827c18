"""Converting the official Instant3D release: the fixture in tests/fixtures/official/ holds the official code's own
modules (reduced widths, random weights, seed 0) and what they computed: the tokens and noise fed in, the
intermediates, the triplane, the field at 256 points, and one deterministic view. The converted model must
reproduce them, in our frame (front = +z), from the state dict alone."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from instant3d.config import preset_config
from instant3d.convert_official import convert, main as convert_main
from instant3d.io.checkpoint import CheckpointError
from instant3d.io.official_layout import OfficialLayoutError, official_config, official_to_ours
from instant3d.models.generator import mirror_planes_z
from instant3d.pipeline import Instant3DPipeline, MissingTextEncoderError

FIXTURE = Path(__file__).parent / "fixtures" / "official"
WEIGHTS = FIXTURE / "official_small_random_seed0.safetensors"
MIRROR = torch.tensor([1.0, 1.0, -1.0])  # official frame -> ours: z -> -z


@pytest.fixture(scope="module")
def reference():
    return load_file(FIXTURE / "reference_io.safetensors")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("official") / "converted"
    assert convert_main([str(WEIGHTS), str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def result(converted, reference):
    pipe = Instant3DPipeline.from_pretrained(converted, device="cpu")
    return pipe(prompt_embeds=reference["in.tokens"], style_noise=reference["in.z"])


def test_the_architecture_comes_from_the_shapes(converted):
    meta = json.loads((converted / "config.json").read_text())
    g, f = meta["model"]["generator"], meta["model"]["field"]
    args = json.loads((FIXTURE / "reference_io.json").read_text())["args"]
    official_order = list(reversed(args["block_out_channels"]))  # up blocks run from the widest
    first = args["block_out_channels"][0]
    assert g["block_out_channels"] == official_order + [first, first // 2]
    assert g["cross_attention"] == [False, True, True, True, False, False]
    groups = args["norm_num_groups"]
    assert g["norm_groups"] == [groups] * 4 + [groups // 2, max(groups // 4, 1)] and g["norm_out_groups"] == groups // 2
    assert g["layers_per_block"] == args["layers_per_block"] + 1
    assert g["triplane_channels"] == args["plane_ch"] and g["style_text_dim"] == args["emb2eot_out"]
    assert meta["model"]["text"]["token_dim"] == args["text_dim"]
    assert (f["albedo_activation"], f["albedo_space"], f["bound"]) == ("padded_sigmoid", "display", 1.75)
    card = (converted / "README.md").read_text()
    assert WEIGHTS.name in card and meta["converted_from"]["sha256"] in card


def test_the_triplane_equals_the_official_one_up_to_the_mirror(result, reference):
    assert (result.triplane - reference["out.triplane"]).abs().max() > 0.1  # our frame is not theirs...
    triplane = mirror_planes_z(result.triplane)  # ...until mirrored back
    assert (triplane - reference["out.triplane"]).abs().max() <= 1e-4


def test_density_and_albedo_at_the_official_points(result, reference):
    points = reference["in.points"][0] * MIRROR  # the same physical points, in our frame
    density, albedo = result.query(points)
    assert (density - reference["out.density"][0]).abs().max() <= 1e-5
    assert (albedo - reference["out.rgb"][0]).abs().max() <= 1e-5


def test_the_deterministic_view_matches_the_official_render(result, reference):
    from instant3d.render.cameras import generate_rays, orbit_cameras
    from instant3d.render.renderer import render_views

    # official phi = 180, theta = 90 -> our azimuth 180 - phi = 0, elevation 90 - theta = 0: the front
    cameras = orbit_cameras(torch.tensor([0.0]), torch.tensor([0.0]), 4.29, 75.0)
    origins, dirs = generate_rays(cameras, 16)
    official_dirs = torch.nn.functional.normalize(reference["view000.rays_d"], dim=-1) * MIRROR
    assert torch.allclose(dirs.reshape(-1, 3), official_dirs, atol=1e-5)  # the same rays, pixel for pixel
    image = render_views(result.field, result.triplane, cameras, 16, background=(0.5, 0.5, 0.5), num_samples=128,
                         num_importance=0).color
    official = (reference["view000.rgb_test_bg"][0] + 1) / 2  # [-1, 1] with empty = 0 -> [0, 1] on grey 0.5
    assert (image.reshape(-1, 3) - official).abs().max() <= 2e-3
    # the camera convention matters: the mirrored image is far off
    assert (image[0].flip(1).reshape(-1, 3) - official).abs().max() > 1e-2


def test_renders_show_display_space_albedo_as_is(result):
    view = result.render(0.0, 0.0, size=32, quality="full", background=(0.5, 0.5, 0.5), clean=False)
    from instant3d.render.renderer import render_views
    from instant3d.render.cameras import orbit_cameras

    cameras = orbit_cameras(torch.tensor([0.0]), torch.tensor([0.0]), 4.29, 75.0)
    raw = render_views(result.field, result.triplane, cameras, 32, background=(0.5, 0.5, 0.5),
                       num_samples=64, num_importance=64).color[0].numpy()
    assert np.abs(view.astype(float) - (raw.clip(0, 1) * 255 + 0.5).astype(np.uint8)).max() <= 1


def test_a_training_snapshot_pth_converts(tmp_path, reference):
    state = load_file(WEIGHTS)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    pth = tmp_path / "model-pretrained.pth"
    torch.save({"G_ema": state, "G": {k: v * 0 for k, v in state.items()}, "optimizer": optimizer.state_dict()},
               pth)
    out = convert(pth, tmp_path / "out")
    pipe = Instant3DPipeline.from_pretrained(out, device="cpu")
    planes = pipe(prompt_embeds=reference["in.tokens"], style_noise=reference["in.z"]).triplane
    assert (mirror_planes_z(planes) - reference["out.triplane"]).abs().max() <= 1e-4  # G_ema, not G


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_pth_with_code_in_it_is_refused_by_the_command(tmp_path, capsys):
    pth = tmp_path / "model-pretrained.pth"
    torch.save({"G_ema": load_file(WEIGHTS), "args": Payload()}, pth)
    assert convert_main([str(pth), str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert "builtins.print" in captured.err and "this must never run" not in captured.out
    assert not (tmp_path / "out").exists()


def test_wrong_tensors_are_named(tmp_path):
    state = load_file(WEIGHTS)
    with_extra = dict(state, **{"triplane_net.extra_head.weight": torch.zeros(3)})
    save_file(with_extra, tmp_path / "extra.safetensors")
    with pytest.raises(OfficialLayoutError, match="extra_head"):
        convert(tmp_path / "extra.safetensors", tmp_path / "a")
    missing = {k: v for k, v in state.items() if k != "triplane_net.up_blocks.1.attentions.0.proj_in.bias"}
    save_file(missing, tmp_path / "missing.safetensors")
    with pytest.raises(OfficialLayoutError, match=r"stages\.1\.attentions\.0\.proj_in\.bias"):
        convert(tmp_path / "missing.safetensors", tmp_path / "b")
    wrong = dict(state, **{"triplane_net.up_blocks.2.resnets.0.conv2.weight": torch.zeros(32, 32, 1, 1)})
    save_file(wrong, tmp_path / "wrong.safetensors")
    with pytest.raises(OfficialLayoutError, match=r"stages\.2\.resnets\.0\.conv2\.weight is \(32, 32, 1, 1\)"):
        convert(tmp_path / "wrong.safetensors", tmp_path / "c")
    not_official = {"unet.conv_in.weight": torch.zeros(4, 4, 3, 3)}
    save_file(not_official, tmp_path / "sd.safetensors")
    with pytest.raises(CheckpointError, match="text_eot_transfer.project_in.weight"):
        convert(tmp_path / "sd.safetensors", tmp_path / "d")


def test_the_two_numbers_shapes_cannot_show_can_be_given(tmp_path, reference):
    """Norm groups and head width follow the official rules by default; a file trained otherwise converts with
    --norm-groups / --head-width, and they change the result (so the defaults above are really tested)."""
    out = tmp_path / "other"
    assert convert_main([str(WEIGHTS), str(out), "--norm-groups", "2", "--head-width", "8"]) == 0
    g = json.loads((out / "config.json").read_text())["model"]["generator"]
    assert g["norm_groups"] == [2, 2, 2, 2, 1, 1] and g["norm_out_groups"] == 1 and g["attention_head_dim"] == 8
    planes = Instant3DPipeline.from_pretrained(out)(prompt_embeds=reference["in.tokens"],
                                                    style_noise=reference["in.z"]).triplane
    assert (mirror_planes_z(planes) - reference["out.triplane"]).abs().max() > 1e-2


def test_the_released_models_shapes_give_the_paper_size_model():
    """The official default's {name: shape} list (1 742 tensors, 269 769 476 parameters), without its weights: the
    derived model has exactly those tensors, and the official code's structure (docs/official-checkpoint.md)."""
    manifest = json.loads((FIXTURE / "official-default-manifest.json").read_text())
    state = {k: torch.empty(v if isinstance(v, list) else v["shape"], device="meta")
             for k, v in manifest["state_dict"].items()}
    config = official_config(state)
    g = config.generator
    assert list(g.block_out_channels) == [320, 320, 160, 80, 80, 40]
    assert list(g.norm_groups) == [8, 8, 8, 8, 4, 2] and g.norm_out_groups == 4
    assert g.layers_per_block == 13 and g.triplane_channels == 32 and config.text.token_dim == 1024
    from instant3d.models.model import Instant3DModel

    with torch.device("meta"):
        model = Instant3DModel(config)
    mapped = official_to_ours(state, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    assert len(mapped) == manifest["num_tensors"] == 1742
    assert model.num_parameters() == manifest["num_parameters"] == 269_769_476
    assert config.to_dict() == preset_config("official").to_dict()  # the preset the benchmarks build


def test_without_a_text_encoder_a_prompt_gets_the_way_to_add_one(converted, reference):
    pipe = Instant3DPipeline.from_pretrained(converted, device="cpu")
    with pytest.raises(MissingTextEncoderError, match="--text-encoder"):
        pipe("a red cube")
    with pytest.raises(ValueError, match=r"prompt_embeds must have shape \(1, 77, 32\)"):
        pipe(prompt_embeds=torch.zeros(1, 77, 31))
    with pytest.raises(ValueError, match="style_noise"):
        pipe(prompt_embeds=reference["in.tokens"], style_noise=torch.zeros(1, 5))


@pytest.mark.slow
def test_end_to_end_with_a_text_encoder_through_the_apps_service(tmp_path):
    """A tiny random text encoder of Stable Diffusion 2.1's classes (CLIPTokenizer + CLIPTextModel, 77 tokens,
    32 wide like the fixture), the converted fixture, and the app's service: a video and a valid GLB."""
    from instant3d.testing.random_models import save_random_clip_text
    from instant3d_app.service import Instant3DService

    sd = save_random_clip_text(tmp_path / "sd21", layout="sd", hidden=32, max_length=77)
    out = convert(WEIGHTS, tmp_path / "converted", text_encoder=sd)
    pipe = Instant3DPipeline.from_pretrained(out, device="cpu")
    service = Instant3DService(pipe, tmp_path / "app", video_frames=4, video_size=64)
    result = service.generate("a red cube", 3, {"resolution": 32, "target_faces": 500, "texture_size": 64,
                                                "threshold": "auto"})
    assert result.video.stat().st_size > 0 and result.preview.shape == (64, 64, 3)
    from tests.test_export import validate

    assert result.glb is not None and validate(result.glb)["issues"]["numErrors"] == 0
