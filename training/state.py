"""Saving and restoring training state without pickles: tensors to safetensors, the rest to JSON."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from instant3d.io.files import atomic_folder


def optimizer_state(optimizer: torch.optim.Optimizer, prefix: str = "optimizer") -> tuple[dict, dict]:
    """(tensors, JSON-able metadata) of an optimizer's state_dict."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict, meta: dict, prefix: str = "optimizer"):
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_run_state(folder, modules: dict[str, torch.nn.Module], optimizer, step: int, extra: dict | None = None):
    """Atomically write ``folder`` with every module's weights, the optimizer and the step (for resuming)."""
    tensors, opt_meta = optimizer_state(optimizer)
    for name, module in modules.items():
        tensors.update({f"{name}::{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()})
    with atomic_folder(folder) as tmp:
        (tmp / "state.safetensors").write_bytes(save_safetensors(tensors))
        (tmp / "state.json").write_text(json.dumps({"step": step, "optimizer": opt_meta, **(extra or {})}))


class RunStateError(RuntimeError):
    """A run state that exists but cannot be read: resuming silently from step 0 would throw the run away."""


def load_run_state(folder, modules: dict[str, torch.nn.Module], optimizer) -> dict | None:
    """Restore what ``save_run_state`` wrote; None when there is no state yet. A state folder that exists but
    cannot be read raises ``RunStateError`` (naming it) instead of starting the run over."""
    folder = Path(folder)
    if not folder.exists():
        return None
    try:
        meta = json.loads((folder / "state.json").read_text())
        tensors = load_safetensors((folder / "state.safetensors").read_bytes())
    except (OSError, ValueError, SafetensorError) as error:
        raise RunStateError(f"the run state in {folder} cannot be read ({error}); move it away to start this run "
                            "over from its last export, or restore it") from error
    for name, module in modules.items():
        module.load_state_dict({k.split("::", 1)[1]: v for k, v in tensors.items() if k.startswith(name + "::")})
    load_optimizer_state(optimizer, tensors, meta["optimizer"])
    return meta
