"""The bundled checkpoints: where the assets folder is, which checkpoints it holds, and which is the default."""

from __future__ import annotations

from pathlib import Path

from instant3d.io.checkpoint import CheckpointError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
CHECKPOINTS = ASSETS / "checkpoints"
DEFAULT_POINTER = CHECKPOINTS / "DEFAULT"  # a text file naming the default checkpoint's folder


def bundled_checkpoints() -> dict[str, Path]:
    """Checkpoint folders in assets/checkpoints (name -> folder)."""
    if not CHECKPOINTS.is_dir():
        return {}
    return {p.name: p for p in sorted(CHECKPOINTS.iterdir()) if (p / "config.json").is_file()}


def default_checkpoint() -> Path:
    """The bundled default checkpoint folder, or a CheckpointError saying why there is none."""
    if not DEFAULT_POINTER.is_file():
        raise CheckpointError(
            f"no bundled default checkpoint: {DEFAULT_POINTER} does not exist. The default is trained by the "
            "toy-world recipe (see docs/toyworld.md); until it is there, pass a checkpoint folder: "
            "Instant3DPipeline.from_pretrained('path/to/checkpoint')"
        )
    folder = CHECKPOINTS / DEFAULT_POINTER.read_text().strip()
    if not folder.is_dir():
        raise CheckpointError(f"{DEFAULT_POINTER} names {folder.name!r}, but {folder} does not exist")
    return folder
