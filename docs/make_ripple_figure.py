"""Remake docs/shape-ripples.png: the report's lit views (azimuths 45° and 135°, elevation 30°) of the exact scene
and of a checkpoint, side by side, for the shapes whose retrievals fail most (cylinders read as cubes, cones as
pyramids; `python -m toyworld.report --confusions`). Also prints, for the cylinder, the area of the object's
cross-section at each height of the 128^3 bake: a true cylinder's is constant, the ripples the lit views show are
its swings.

    python docs/make_ripple_figure.py [--checkpoint assets/checkpoints/toyworld-supervised-details]
                                      [--out docs/shape-ripples.png] [--upsampling nearest,bilinear,nearest,nearest]

--upsampling runs the checkpoint's weights with other upsampling modes, one per decoder stage, untrained: which
stage's nearest-neighbour doubling the ripples follow.
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image

from instant3d.pipeline import Instant3DPipeline
from instant3d.render.cleanup import auto_threshold
from toyworld.ground_truth import GroundTruthPipeline

PROMPTS = ["a yellow cylinder", "a large pink cone", "a small red cone", "a yellow cube"]
VIEWS = dict(azimuths=[45.0, 135.0], elevations=[30.0, 30.0])


def lit_row(out, size: int) -> np.ndarray:
    return np.concatenate([np.asarray(img) for img in out.render_many(VIEWS["azimuths"], VIEWS["elevations"], size,
                                                                       shading="lit")], axis=1)


def cross_sections(out, resolution: int = 128) -> list[int]:
    """Occupied voxels (density above the export's "auto" threshold) in each horizontal slice of the bake."""
    density = out.field.bake(out.triplane, resolution)[0].cpu().numpy()  # (z, y, x)
    occupied = density > auto_threshold(density, 2 * out.bound / resolution)
    areas = occupied.sum(axis=(0, 2))
    return [int(a) for a in areas if a > 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="assets/checkpoints/toyworld-supervised-details")
    parser.add_argument("--out", default="docs/shape-ripples.png")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--upsampling", default="", help="comma-separated modes, one per decoder stage")
    args = parser.parse_args()
    pipe = Instant3DPipeline.from_pretrained(args.checkpoint)
    if args.upsampling:
        pipe.model = pipe.model.with_upsampling(args.upsampling.split(",")).eval().requires_grad_(False)
    truth = GroundTruthPipeline(pipe.config.render)
    rows = []
    for prompt in PROMPTS:
        out = pipe(prompt, seed=0)
        rows.append(np.concatenate([lit_row(truth(prompt), args.size), lit_row(out, args.size)], axis=1))
        if prompt == PROMPTS[0]:
            areas = cross_sections(out)
            print(f"{prompt}: cross-section area per height (voxels of the 128^3 bake, bottom to top):")
            print(" ".join(map(str, areas)))
            middle = areas[len(areas) // 5: -len(areas) // 5]  # the side, away from the rounded rims
            print(f"middle three fifths: {min(middle)}-{max(middle)} voxels "
                  f"(std / mean {np.std(middle) / np.mean(middle):.3f})")
        pipe.cache.clear()
    Image.fromarray(np.concatenate(rows, axis=0).astype(np.uint8)).save(args.out)
    print(f"wrote {args.out} (left two: exact scene; right two: {args.checkpoint})")


if __name__ == "__main__":
    main()
