"""Generate objects from the command line, one prompt or a file of them, for scripts and batches.

    instant3d-generate "a red cube on top of a blue sphere" "a white snowman with a carrot nose" --out outputs/
    instant3d-generate --prompts prompts.txt --out outputs/ --seed 3 --glb --video

One folder per prompt under ``--out`` (``NNN-words-of-the-prompt-sSEED``), each with what was asked for:
``model.glb`` (--glb), ``model_obj.zip`` (--obj: OBJ + MTL + PNG texture), ``orbit.mp4`` (--video) and
``view-front.png`` / ``view-side.png`` / ``view-back.png`` (--views); with none of these flags, the GLB, the
video and the views. Every file is written atomically. A prompt that fails (empty, or an export that finds no
surface) is reported and skipped; the others are still made, and the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

VIEWS = {"front": 0.0, "side": 90.0, "back": 180.0}


def folder_name(index: int, prompt: str, seed: int) -> str:
    """A readable, filesystem-safe folder name; the index keeps two prompts with the same words apart."""
    words = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:60].strip("-") or "prompt"
    return f"{index:03d}-{words}-s{seed}"


def read_prompts(path: Path) -> list[str]:
    """One prompt per line; blank lines and lines starting with # are skipped."""
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [p for p in prompts if p and not p.startswith("#")]


def save_png(image, path: Path) -> None:
    from PIL import Image

    from instant3d.io.files import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def make_one(pipe, prompt: str, seed: int, folder: Path, wanted: set[str], size: int, frames: int,
             elevation: float, export: dict) -> list[str]:
    """The files for one prompt; returns the notes (truncation, unknown words) to show."""
    out = pipe(prompt, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    if wanted & {"glb", "obj"}:
        out.export_files(glb=folder / "model.glb" if "glb" in wanted else None,
                         obj_zip=folder / "model_obj.zip" if "obj" in wanted else None, **export)
    if "video" in wanted:
        out.orbit_video(folder / "orbit.mp4", frames=frames, size=size, elevation=elevation)
    if "views" in wanted:
        for name, azimuth in VIEWS.items():
            save_png(out.render(azimuth, elevation, size=size, shading="lit"), folder / f"view-{name}.png")
    pipe.cache.clear()  # a batch never asks for the same object twice
    return list(out.notes)


def main(argv=None) -> int:
    from tqdm import tqdm

    from instant3d.export.mesh import ExportError, ExportOptions
    from instant3d.io.checkpoint import CheckpointError
    from instant3d.models.text_encoder import PromptError
    from instant3d.pipeline import Instant3DPipeline

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt", nargs="*", help="prompts (or --prompts FILE)")
    parser.add_argument("--prompts", type=Path, default=None, help="a file of prompts, one per line")
    parser.add_argument("--out", type=Path, default=Path("outputs"), help="folder for the per-prompt folders")
    parser.add_argument("--seed", type=int, default=0, help="the style seed of every object (default 0)")
    parser.add_argument("--glb", action="store_true", help="write model.glb")
    parser.add_argument("--obj", action="store_true", help="write model_obj.zip (OBJ + MTL + texture)")
    parser.add_argument("--video", action="store_true", help="write orbit.mp4")
    parser.add_argument("--views", action="store_true", help="write front, side and back views (PNG)")
    parser.add_argument("--size", type=int, default=256, help="video and view size in pixels (a multiple of 16)")
    parser.add_argument("--frames", type=int, default=48, help="orbit video frames")
    parser.add_argument("--elevation", type=float, default=15.0, help="camera elevation of video and views")
    parser.add_argument("--resolution", type=int, default=128, help="export: density grid resolution")
    parser.add_argument("--threshold", default="auto",
                        help="export: surface density, or auto (the app's default: checkpoints differ in scale)")
    parser.add_argument("--texture-size", type=int, default=ExportOptions.texture_size,
                        help="export: texture size in pixels")
    parser.add_argument("--checkpoint", type=Path, default=None, help="checkpoint folder (default: the bundled one)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    args = parser.parse_args(argv)

    try:
        prompts = list(args.prompt) + (read_prompts(args.prompts) if args.prompts else [])
    except (FileNotFoundError, UnicodeDecodeError) as exc:
        parser.error(str(exc))
    if not prompts:
        parser.error("give at least one prompt, or --prompts FILE with one prompt per line")
    if args.size % 16 or not 16 <= args.size <= 1024:
        parser.error(f"--size must be a multiple of 16 from 16 to 1024, got {args.size}")
    try:
        export = {"resolution": args.resolution, "texture_size": args.texture_size,
                  "threshold": args.threshold if args.threshold == "auto" else float(args.threshold)}
        ExportOptions.from_kwargs(**export)
    except (ValueError, ExportError) as exc:
        parser.error(f"export settings: {exc}")
    wanted = {k for k in ("glb", "obj", "video", "views") if getattr(args, k)} or {"glb", "video", "views"}
    try:
        pipe = Instant3DPipeline.from_pretrained(args.checkpoint, device=args.device)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    failed = []
    for index, prompt in enumerate(tqdm(prompts, desc="generate", unit="prompt")):
        folder = args.out / folder_name(index, prompt, args.seed)
        try:
            notes = make_one(pipe, prompt, args.seed, folder, wanted, args.size, args.frames, args.elevation,
                             export)
        except (PromptError, ExportError, ValueError) as exc:
            failed.append((prompt, str(exc)))
            tqdm.write(f"skipped {prompt!r}: {exc}", file=sys.stderr)
            continue
        for note in notes:
            tqdm.write(f"note for {prompt!r}: {note}", file=sys.stderr)
    made = len(prompts) - len(failed)
    print(f"made {made} of {len(prompts)} objects in {args.out}")
    for prompt, why in failed:
        print(f"failed: {prompt!r}: {why}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
