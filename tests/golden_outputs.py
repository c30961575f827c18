"""Golden outputs of the bundled default: numbers that summarise its triplanes and a rendered view for fixed
prompts and seeds. ``tests/test_golden.py`` compares them with the stored ones, so that a library upgrade (torch,
diffusers, transformers) or a refactor that changes what the default makes fails loudly.

When a change of the numbers is intended (a new default, a deliberate change of the renderer), regenerate them
and say why in the commit:

    python -m tests.golden_outputs --update
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

GOLDEN = Path(__file__).resolve().parent / "golden" / "default.json"
PROMPTS = ["a white snowman with a carrot nose", "a red cube on top of a blue sphere", "a yellow duck with an orange beak"]
SEEDS = [0, 7]


def summarise(out) -> dict:
    """Statistics of the triplane (whole and per plane), a few fixed elements, and a 64^2 reference render."""
    planes = out.triplane[0].double()  # (3, C, R, R)
    flat = planes.flatten()
    picks = torch.linspace(0, flat.numel() - 1, 8).long()
    image = out.render(azimuth=30.0, elevation=20.0, size=64, quality="full").astype("float64") / 255.0
    return {
        "triplane_shape": list(out.triplane.shape),
        "mean": float(flat.mean()), "std": float(flat.std()), "abs_max": float(flat.abs().max()),
        "plane_abs_means": [float(p.abs().mean()) for p in planes],
        "elements": [float(flat[i]) for i in picks],
        "render_mean_rgb": [float(v) for v in image.reshape(-1, image.shape[-1])[:, :3].mean(0)],
    }


def golden_outputs() -> dict:
    from instant3d import Instant3DPipeline

    pipe = Instant3DPipeline.from_pretrained(device="cpu")
    return {f"{prompt} | seed {seed}": summarise(pipe(prompt, seed=seed)) for prompt in PROMPTS for seed in SEEDS}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--update", action="store_true", help=f"write {GOLDEN.name}")
    args = parser.parse_args(argv)
    values = golden_outputs()
    text = json.dumps(values, indent=1)
    if args.update:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
