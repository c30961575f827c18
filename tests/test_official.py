"""Reading the official release's checkpoint safely: nothing in the file is executed, and every way it can be
wrong gets a message that says so."""

import collections

import pytest
import torch
from safetensors.torch import save_file

from instant3d.io.official import OfficialCheckpointError, read_official_generator


class Payload:
    """Stands for anything a pickle could smuggle in: unpickling it would run code."""

    def __reduce__(self):
        return (print, ("this must never run",))


def _state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {"decoder.net.0.weight": torch.randn(64, 8, generator=gen), "decoder.net.0.bias": torch.zeros(64),
            "triplane_net.conv_out.weight": torch.randn(24, 16, 3, 3, generator=gen)}


def test_a_training_snapshot_gives_its_averaged_generator(tmp_path):
    state = _state()
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    path = tmp_path / "model-pretrained.pth"
    torch.save({"G_ema": state, "G": {k: v + 1 for k, v in state.items()}, "optimizer": optimizer.state_dict()},
               path)
    got = read_official_generator(path)
    assert sorted(got) == sorted(state)
    assert all(torch.equal(got[k], state[k]) for k in state)  # G_ema, not G


def test_ddp_prefix_and_safetensors(tmp_path):
    state = _state()
    path = tmp_path / "ddp.pth"
    torch.save({"G_ema": collections.OrderedDict((f"module.{k}", v) for k, v in state.items())}, path)
    assert sorted(read_official_generator(path)) == sorted(state)
    save_file(state, tmp_path / "g_ema.safetensors")
    got = read_official_generator(tmp_path / "g_ema.safetensors")
    assert all(torch.equal(got[k], state[k]) for k in state)


def test_a_file_with_code_in_it_is_refused_without_running_it(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"G_ema": _state(), "args": Payload()}, path)
    with pytest.raises(OfficialCheckpointError, match="builtins.print") as info:
        read_official_generator(path)
    assert "was not loaded" in str(info.value)
    assert "this must never run" not in capsys.readouterr().out


@pytest.mark.parametrize("content, message", [
    ({"G": {"a": torch.zeros(1)}}, "no 'G_ema' entry"),
    ({"G_ema": torch.zeros(3)}, "not a state dict"),
    ({"G_ema": {"a": torch.zeros(1), "b": 3}}, "not a state dict"),
    ([torch.zeros(1)], "holds a list"),
])
def test_wrong_contents_are_named(tmp_path, content, message):
    path = tmp_path / "x.pth"
    torch.save(content, path)
    with pytest.raises(OfficialCheckpointError, match=message):
        read_official_generator(path)


def test_not_a_checkpoint_at_all(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(OfficialCheckpointError, match="not a PyTorch checkpoint"):
        read_official_generator(text)
    with pytest.raises(OfficialCheckpointError, match="does not exist"):
        read_official_generator(tmp_path / "missing.pth")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 16)
    with pytest.raises(OfficialCheckpointError, match="not a readable safetensors"):
        read_official_generator(broken)
