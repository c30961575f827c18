"""Which density level is a generator's surface? Print, per checkpoint, the geometry IoU against the exact scenes
of {density >= level} on a 96^3 grid at several levels, and where the export's "auto" level lands (its median and
range) and where it would land without its thin-part bound, over 30 objects at seed 0: every 15th held-out prompt
and every 3rd front-facing one. The table in docs/toyworld.md, "Published as the default", came from it.

    python docs/measure_surface_levels.py [--checkpoints toyworld-supervised-details toyworld-supervised-bilinear]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from instant3d.pipeline import Instant3DPipeline
from instant3d.render.cleanup import auto_threshold, body_surface_level
from toyworld.metrics import voxel_centres
from toyworld.report import front_facing_prompts
from toyworld.scenes import prompt_split, scene_for_prompt

ROOT = Path(__file__).resolve().parent.parent
LEVELS = (8.0, 12.0, 16.6, 24.0, 34.0, 48.0)
RESOLUTION = 96


@torch.no_grad()
def level_ious(pipe, prompts: list[str]) -> tuple[dict[float, float], list[float], list[float]]:
    """Mean IoU per level, and each object's "auto" level on the same grid, with and without the thin-part bound."""
    ious: dict[float, list[float]] = {level: [] for level in LEVELS}
    autos, unbounded = [], []
    for prompt in prompts:
        out = pipe(prompt, seed=0)
        density = out.density_grid(RESOLUTION).cpu().numpy()
        voxel = 2 * out.bound / RESOLUTION
        autos.append(auto_threshold(density, voxel))
        unbounded.append(body_surface_level(density, voxel))
        truth = scene_for_prompt(prompt).occupancy(voxel_centres(RESOLUTION, out.bound)).numpy().reshape(-1)
        for level in LEVELS:
            made = density.reshape(-1) >= level
            ious[level].append((made & truth).sum() / (made | truth).sum())
        pipe.cache.clear()
    return {level: float(np.mean(v)) for level, v in ious.items()}, autos, unbounded


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", nargs="+",
                        default=["toyworld-supervised-details", "toyworld-supervised-bilinear"],
                        help="names under assets/checkpoints, or folders")
    args = parser.parse_args(argv)
    _, held_out = prompt_split()
    prompts = held_out[::15] + front_facing_prompts()[::3]
    print(f"{len(prompts)} objects, seed 0, IoU of density >= level on a {RESOLUTION}^3 grid\n")
    print("| checkpoint | \"auto\": median (range) | without the bound | "
          + " | ".join(f"IoU at {level:g}" for level in LEVELS) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in LEVELS) + " |")
    for name in args.checkpoints:
        folder = Path(name) if Path(name).is_dir() else ROOT / "assets" / "checkpoints" / name
        ious, autos, unbounded = level_ious(Instant3DPipeline.from_pretrained(folder), prompts)
        spread = lambda v: f"{np.median(v):.1f} ({min(v):.1f}-{max(v):.1f})"  # noqa: E731
        print(f"| {folder.name} | {spread(autos)} | {spread(unbounded)} | "
              + " | ".join(f"{ious[level]:.3f}" for level in LEVELS) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
