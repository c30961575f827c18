"""Checkpoints in the Hugging Face layout: a folder with config.json and model.safetensors.

```
checkpoint/
  config.json          {"_class_name": "Instant3DModel", "model": {...}, "text_encoder": "text_encoder", ...}
  model.safetensors    generator + field weights
  text_encoder/        (optional) a plain CLIP folder; "text_encoder" may instead be a relative path
```

We do not use ``PyTorchModelHubMixin.from_pretrained`` because it loads with ``strict=False`` by default,
falls back to unpickling ``pytorch_model.bin`` and cannot rebuild a nested config. Here loading never
unpickles, checks every tensor's name and shape against the config before loading, and says which
file is wrong. Saving is atomic: the folder is written beside the target and renamed into place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from instant3d.config import ConfigError, Instant3DConfig
from instant3d.io.files import atomic_folder
from instant3d.models.model import Instant3DModel

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CLASS_NAME = "Instant3DModel"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded; the message names the file and the problem."""


def read_checkpoint_config(folder) -> tuple[Instant3DConfig, dict]:
    """(model config, the whole config.json) of a checkpoint folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist (or is not a folder)")
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{folder} is not an instant3d checkpoint: {CONFIG_NAME} is missing")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); the checkpoint is damaged") from exc
    if not isinstance(meta, dict) or meta.get("_class_name") != CLASS_NAME:
        raise CheckpointError(f"{path} does not describe an {CLASS_NAME} (no '_class_name': '{CLASS_NAME}')")
    try:
        config = Instant3DConfig.from_dict(meta.get("model", {}))
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    return config, meta


def load_model(folder, device: str | torch.device = "cpu") -> tuple[Instant3DModel, dict]:
    """Build the model its config.json describes and load model.safetensors into it, strictly."""
    folder = Path(folder)
    config, meta = read_checkpoint_config(folder)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        pickles = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt*")]
        hint = f" (found {pickles}: pickled weights are never loaded)" if pickles else ""
        raise CheckpointError(f"{folder}: {WEIGHTS_NAME} is missing{hint}")
    model = Instant3DModel(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = {}
    try:
        with safe_open(weights, framework="pt", device=str(device)) as f:
            found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            _check_shapes(weights, expected, found)
            for key in expected:
                state[key] = f.get_tensor(key)
    except SafetensorError as exc:
        raise CheckpointError(f"{weights} is truncated or corrupt ({exc}); re-download or re-export it") from exc
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), meta


def _check_shapes(path: Path, expected: dict, found: dict) -> None:
    problems = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing:
        problems.append(f"missing tensors {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
    wrong = [k for k in expected if k in found and found[k] != expected[k]]
    for key in wrong[:3]:
        problems.append(f"{key} has shape {found[key]} but the config needs {expected[key]}")
    if problems:
        raise CheckpointError(
            f"{path} does not match its {CONFIG_NAME}: " + "; ".join(problems)
            + (f" (and {len(wrong) - 3} more shape mismatches)" if len(wrong) > 3 else "")
        )


def save_checkpoint(
    model: Instant3DModel,
    folder,
    *,
    text_encoder=None,
    text_encoder_path: str | None = None,
    extra: dict | None = None,
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """Write a checkpoint folder atomically.

    Either ``text_encoder`` (a ``TextEncoder``: copied into ``text_encoder/``) or ``text_encoder_path``
    (a path stored as given, resolved relative to the checkpoint folder when loading) names the encoder.
    ``extra`` holds anything else worth keeping (training step, the command that made it...); ``extra_files``
    (name -> bytes, e.g. a trainer's state) are written into the folder before it is renamed into place.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "_class_name": CLASS_NAME,
        "_format_version": FORMAT_VERSION,
        "model": model.config.to_dict(),
        "text_encoder": "text_encoder" if text_encoder is not None else text_encoder_path,
        **(extra or {}),
    }
    with atomic_folder(folder) as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, tmp / WEIGHTS_NAME, metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True))
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        if text_encoder is not None:
            text_encoder.tokenizer.save_pretrained(tmp / "text_encoder")
            text_encoder.model.save_pretrained(tmp / "text_encoder", safe_serialization=True)
        for path in tmp.rglob("*"):
            if path.is_file():
                with open(path, "rb") as fh:
                    os.fsync(fh.fileno())
    return folder


def text_encoder_folder(checkpoint: Path, meta: dict) -> Path:
    """The folder holding the checkpoint's text encoder (relative references resolve from the checkpoint)."""
    ref = meta.get("text_encoder")
    if not ref:
        raise CheckpointError(f"{checkpoint / CONFIG_NAME} names no text encoder ('text_encoder' is empty)")
    path = Path(ref)
    return path if path.is_absolute() else (checkpoint / path).resolve()
