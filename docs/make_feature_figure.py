"""Remake docs/small-features.png: the snowman, duck and house of two checkpoints, from the front and from behind
(lit 192^2 views at seed 0), so the drawn nose, beak and door and their absence on the back can be seen.

    python docs/make_feature_figure.py [--out docs/small-features.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from instant3d.pipeline import Instant3DPipeline
from instant3d.registry import bundled_checkpoints

PROMPTS = ["a white snowman with a carrot nose", "a yellow duck with an orange beak", "a blue house with a door"]
CHECKPOINTS = ["toyworld-supervised", "toyworld-supervised-details"]
VIEWS = [("front", 20.0), ("back", 200.0)]  # azimuth 0 faces the object's front (+z); 20 deg off shows depth
SIZE = 192
LABEL = 22


def figure() -> Image.Image:
    """One row per checkpoint; for each prompt a front and a back view."""
    columns = len(PROMPTS) * len(VIEWS)
    sheet = Image.new("RGB", (columns * SIZE, len(CHECKPOINTS) * (SIZE + LABEL)), "white")
    draw = ImageDraw.Draw(sheet)
    folders = bundled_checkpoints()
    for row, name in enumerate(CHECKPOINTS):
        pipe = Instant3DPipeline.from_pretrained(folders[name], device="cpu")
        top = row * (SIZE + LABEL)
        draw.text((4, top + 4), name, fill="black")
        for i, prompt in enumerate(PROMPTS):
            out = pipe(prompt, seed=0)
            for j, (view, azimuth) in enumerate(VIEWS):
                image = np.asarray(out.render(azimuth=azimuth, elevation=15, size=SIZE, shading="lit"))
                x = (i * len(VIEWS) + j) * SIZE
                sheet.paste(Image.fromarray(image), (x, top + LABEL))
                if row == 0:
                    draw.text((x + 4, top + LABEL + 4), f"{prompt.split(' with ')[0][2:]}, {view}", fill="black")
    return sheet


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "small-features.png"))
    args = parser.parse_args(argv)
    tmp = Path(args.out).with_suffix(".tmp.png")
    figure().save(tmp)
    tmp.replace(args.out)
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
