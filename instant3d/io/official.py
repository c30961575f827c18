"""Reading the official Instant3D release's generator weights without executing anything from the file.

The official training code saves a pickled dict, ``{'G_ema': state_dict, ...}`` (perhaps also ``'G'``, an
optimizer and loss scalers), as ``model-pretrained.pth``. A pickle can run code when loaded, so this module:

1. lists the globals the pickle would import that torch's weights-only loader does not allow
   (``torch.serialization.get_unsafe_globals_in_checkpoint``, which reads the pickle without running it) and
   refuses the file, naming them, if there are any;
2. loads it with ``weights_only=True`` (and ``mmap=True``, so a 1 GB file is not read into memory at once);
3. takes ``G_ema`` (the averaged generator the official inference uses) and strips a DistributedDataParallel
   ``module.`` prefix.

A ``.safetensors`` file holding the same state dict under the official names is read directly. The mapping of
those names onto this engine's modules is the converter's job, not this module's.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from instant3d.io.checkpoint import CheckpointError

GENERATOR_KEY = "G_ema"


class OfficialCheckpointError(CheckpointError):
    """The file is not a usable official checkpoint; the message says why and what to do."""


def unsafe_globals(path: Path) -> list[str]:
    """The globals the pickle in ``path`` would import beyond torch's weights-only allow-list (nothing is run)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except (RuntimeError, ValueError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise OfficialCheckpointError(
            f"{path} is not a PyTorch checkpoint ({type(exc).__name__}: {exc}). Give the official "
            "model-pretrained.pth, or a .safetensors file of its G_ema state dict") from None


def _tensors_only(state: dict, where: str) -> dict[str, torch.Tensor]:
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise OfficialCheckpointError(f"{where} is not a state dict: {bad[:5]} are not (name, tensor) entries")
    prefix = "module."
    if state and all(k.startswith(prefix) for k in state):  # saved from inside DistributedDataParallel
        state = {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def read_official_generator(path) -> dict[str, torch.Tensor]:
    """The official generator's state dict (``G_ema``) from a ``.pth`` or ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise OfficialCheckpointError(f"{path} does not exist or is not a file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return _tensors_only(load_file(str(path)), str(path))
        except SafetensorError as exc:
            raise OfficialCheckpointError(f"{path} is not a readable safetensors file: {exc}") from None
    unsafe = unsafe_globals(path)
    if unsafe:
        raise OfficialCheckpointError(
            f"{path} holds Python objects that loading would have to execute: {', '.join(sorted(unsafe))}. It was "
            "not loaded. If you trust the file, re-save just its weights in a trusted environment, e.g. "
            "torch.save({'G_ema': ckpt['G_ema']}, 'clean.pth'), and convert that")
    try:
        content = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001  (torch raises many kinds for a bad file; all mean the same here)
        raise OfficialCheckpointError(f"{path} could not be read as weights only: {exc}") from None
    if not isinstance(content, dict):
        raise OfficialCheckpointError(f"{path} holds a {type(content).__name__}, not the official dict with "
                                      f"{GENERATOR_KEY!r}")
    if GENERATOR_KEY not in content:
        keys = ", ".join(repr(k) for k in list(content)[:8])
        raise OfficialCheckpointError(f"{path} has no {GENERATOR_KEY!r} entry (it has {keys}); the official "
                                      "release keeps the generator used for inference there")
    state = content[GENERATOR_KEY]
    if not isinstance(state, dict):
        raise OfficialCheckpointError(f"{path}: {GENERATOR_KEY!r} is a {type(state).__name__}, not a state dict")
    return _tensors_only(state, f"{path}[{GENERATOR_KEY!r}]")
