"""Remake docs/prior-64-pairs.png: front/back sample pairs of a diffusion prior for the front-facing objects, each
pair drawn from the same noise (DDIM 20, CFG 3), so whether the view words change the picture, and whether a nose,
beak or door is drawn, can be seen. Rows: seed 0 front, seed 0 back, seed 1 front, seed 1 back.

    python docs/make_prior_pairs.py --prior runs/toy-diffusion-64 [--out docs/prior-64-pairs.png]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from training.guidance import DiffusionGuidance
from toyworld.prior_eval import sample

PROMPTS = ["a white snowman with a carrot nose", "a red snowman with a carrot nose", "a yellow duck with an orange beak",
           "a green duck with an orange beak", "a blue house with a door", "a white house with a door"]
CELL = 96


def pairs(prior: str, seeds=(0, 1), cfg: float = 3.0) -> np.ndarray:
    guidance = DiffusionGuidance.from_folder(prior, perp_neg="none")
    rows = []
    for seed in seeds:
        for view in ("front", "back"):
            images = sample(guidance, [f"{p}, {view} view" for p in PROMPTS], cfg=cfg, steps=20, seed=seed)
            rows.append(torch.cat(list(F.interpolate(images, size=CELL, mode="nearest")), dim=2))
    grid = torch.cat(rows, dim=1).clamp(0, 1).permute(1, 2, 0).numpy()
    return (grid * 255).round().astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", required=True)
    parser.add_argument("--out", default="docs/prior-64-pairs.png")
    args = parser.parse_args()
    Image.fromarray(pairs(args.prior)).save(args.out)


if __name__ == "__main__":
    main()
