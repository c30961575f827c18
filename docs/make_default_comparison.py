"""Draw docs/bilinear-default-vs-previous.png: the previous default (top) and the bilinear default (bottom), each
prompt at seed 0 in albedo and lit, from the front-left (azimuth 20°) and from the side (azimuth 90°, where a nose
or a beak shows as a silhouette), as the app draws them (the cleaned object the GLB holds).

    python docs/make_default_comparison.py [--out docs/bilinear-default-vs-previous.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from instant3d.pipeline import Instant3DPipeline

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINTS = ["toyworld-supervised-details", "toyworld-supervised-bilinear"]  # previous, new
PROMPTS = ["a white snowman with a carrot nose", "a yellow duck with an orange beak", "a white house with a door",
           "a red cube on top of a blue sphere"]
VIEWS = [(20.0, "albedo"), (20.0, "lit"), (90.0, "lit")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "docs" / "bilinear-default-vs-previous.png"))
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args(argv)
    rows = []
    for name in CHECKPOINTS:
        pipe = Instant3DPipeline.from_pretrained(ROOT / "assets" / "checkpoints" / name)
        tiles = []
        for prompt in PROMPTS:
            out = pipe(prompt, seed=0)
            tiles += [out.render(azimuth, 15.0, size=args.size, shading=shading) for azimuth, shading in VIEWS]
        rows.append(np.concatenate(tiles, axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(args.out, optimize=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
