"""How far a generator's training renders are from the images its prior learnt: the prior's denoising error on
the generator's renders against exact renders of the same scene, from the same cameras, on the same backgrounds,
with the same shading and the same noise.

    python -m toyworld.prior_gap --prior assets/priors/toy-diffusion --checkpoint assets/checkpoints/toyworld-sds \
        [--split held_out] [--prompts 60] [--views 4]

Why: SDS pushes a render towards where the prior's score points. Where the generator's renders are off the prior's
image distribution (no anti-aliasing, haze, washed-out albedo), the score also says "look like a training image",
not only "look like the prompt" (SDS-Bridge, McAllister et al. 2024). The table puts that gap in the units of the
text signal: at each noise level, the gap (error on the generator's render minus error on the exact render, both
under the true caption) beside the text's worth (error on the exact render under a one-attribute rival caption
minus under the true one). A gap many times the text's worth means SDS at that noise level mostly teaches the
renders' style, not the prompt.

The generator renders as SDS training shows them to the prior: the training renderer at the prior's own size, one
ray per pixel (``--supersample k``: k x k, averaged), sRGB, the training cameras, backgrounds and shading; only the
samples along each ray are not jittered. The exact scene is rendered as the prior's training images were (2x2
supersampled).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from instant3d.pipeline import Instant3DPipeline
from instant3d.render.color import linear_to_srgb, to_display
from instant3d.render.renderer import render_views

from training.guidance import DiffusionGuidance
from training.sampling import CameraRanges, sample_views
from .dataset import view_label
from .prior_train import PRIOR_SHADING
from .prior_probe import attribute_alternatives, caption, denoising_errors
from .render import render_scene
from .scenes import prompt_split, scene_for_prompt, spread_subset

TIMESTEPS = (50, 200, 400, 600, 800, 950)


@dataclass
class PairedRenders:
    """Generator renders and exact renders of the same prompts from the same views, sRGB (N, 3, H, W) in [0, 1]."""

    generated: torch.Tensor
    exact: torch.Tensor
    captions: list[str]  # "<prompt>, <view> view"
    rivals: list[str]  # the same caption with a one-attribute rival prompt (a colour, else a shape, changed)
    shading: list[str]


def rival_prompt(prompt: str) -> str:
    """A prompt of the world that differs from ``prompt`` in one attribute: its colour if it has one, else its
    shape (the first such, so the choice is reproducible)."""
    alternatives = attribute_alternatives(prompt)
    for attribute in ("colour", "shape", "size", "binding"):
        if alternatives[attribute]:
            return alternatives[attribute][0]
    raise ValueError(f"no one-attribute rival for {prompt!r}")


@torch.no_grad()
def paired_renders(pipe: Instant3DPipeline, prompts: list[str], views: int, size: int, seed: int = 0,
                   samples: int = 32, importance: int = 32, ambient: float = 0.1,
                   supersample: int = 1) -> PairedRenders:
    """``views`` random training views of each prompt (one shading mode per prompt, drawn as the prior's training
    images' were), the generator's object (noise seed 0) and the exact scene each rendered from them.
    ``supersample`` k renders the generator at k x the size and averages k x k blocks (as the exact renders are),
    to test anti-aliasing."""
    gen = torch.Generator().manual_seed(seed)
    generated, exact, captions, rivals, shading = [], [], [], [], []
    albedo_space = pipe.config.field.albedo_space
    for prompt in prompts:
        batch = sample_views(views, CameraRanges(), PRIOR_SHADING, gen)
        out = pipe(prompt, seed=0)
        # rendered over black, then each view's own background composited (linear) as the trainer's renderer does
        result = render_views(out.field, out.triplane, batch.cameras, size * supersample,
                              background=(0.0, 0.0, 0.0), num_samples=samples, num_importance=importance,
                              shading=batch.shading, light_dirs=batch.light_dirs, ambient=ambient)
        image = result.color + (1 - result.opacity[..., None]) * batch.background[:, None, None, :]
        if supersample > 1:  # linear colours averaged over each k x k block, as render_scene does
            image = F.avg_pool2d(image.permute(0, 3, 1, 2), supersample).permute(0, 2, 3, 1)
        generated.append(to_display(image.clamp(0, 1), albedo_space))
        truth, _ = render_scene(scene_for_prompt(prompt), batch.cameras, size, batch.background, batch.shading,
                                batch.light_dirs, ambient=ambient)
        exact.append(linear_to_srgb(truth))
        rival = rival_prompt(prompt)
        for az, el in zip(batch.azimuth.tolist(), batch.elevation.tolist()):
            view = view_label(az, el)
            captions.append(caption(prompt, view))
            rivals.append(caption(rival, view))
            shading.append(batch.shading)
        pipe.cache.clear()
    as_images = lambda xs: torch.cat(xs).permute(0, 3, 1, 2).float()  # noqa: E731
    return PairedRenders(as_images(generated), as_images(exact), captions, rivals, shading)


def gap_table(guidance: DiffusionGuidance, pairs: PairedRenders, timesteps=TIMESTEPS, seed: int = 0) -> list[dict]:
    """Per noise level: the prior's mean epsilon error on the exact renders (true caption), on the generator's
    renders (true caption, the same noise) and on the exact renders under the rival caption; the gap and the
    text's worth; overall and per shading mode."""
    rows = []
    for t in timesteps:
        exact = denoising_errors(guidance, pairs.exact, [[c, r] for c, r in zip(pairs.captions, pairs.rivals)],
                                 [t], seed)
        generated = denoising_errors(guidance, pairs.generated, [[c] for c in pairs.captions], [t], seed)
        true_exact = torch.stack([e[0] for e in exact])
        rival_exact = torch.stack([e[1] for e in exact])
        true_generated = torch.stack([e[0] for e in generated])
        for mode in ("all", *sorted(set(pairs.shading))):
            keep = torch.tensor([mode in ("all", s) for s in pairs.shading])
            row = {"t": t, "shading": mode, "images": int(keep.sum()),
                   "exact": float(true_exact[keep].mean()), "generated": float(true_generated[keep].mean()),
                   "exact_rival": float(rival_exact[keep].mean())}
            row["gap"] = row["generated"] - row["exact"]
            row["text_worth"] = row["exact_rival"] - row["exact"]
            rows.append(row)
    return rows


def print_gap_table(rows: list[dict]) -> None:
    print("| t | shading | error, exact render | error, generator's render | gap | text's worth (rival caption "
          "on the exact render) | gap / text's worth | images |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        ratio = r["gap"] / r["text_worth"] if r["text_worth"] > 0 else float("nan")
        print(f"| {r['t']} | {r['shading']} | {r['exact']:.4f} | {r['generated']:.4f} | {r['gap']:+.4f} | "
              f"{r['text_worth']:+.4f} | {ratio:.1f} | {r['images']} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", required=True, help="the diffusion prior's folder")
    parser.add_argument("--checkpoint", required=True, help="the generator's checkpoint folder")
    parser.add_argument("--split", choices=["held_out", "train"], default="held_out")
    parser.add_argument("--prompts", type=int, default=60, help="an even spread over the split")
    parser.add_argument("--views", type=int, default=4, help="random training views per prompt")
    parser.add_argument("--samples", type=int, default=32, help="the training renderer's samples per ray")
    parser.add_argument("--importance", type=int, default=32, help="and its importance samples")
    parser.add_argument("--supersample", type=int, default=1,
                        help="render the generator at k x the size and average k x k blocks (1: as SDS training does)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    guidance = DiffusionGuidance.from_folder(args.prior, perp_neg="none")
    pipe = Instant3DPipeline.from_pretrained(args.checkpoint)
    train, held_out = prompt_split()
    prompts = spread_subset(sorted(held_out if args.split == "held_out" else train), args.prompts)
    size = guidance.unet.config.sample_size
    pairs = paired_renders(pipe, prompts, args.views, size, args.seed, args.samples, args.importance,
                           supersample=args.supersample)
    rows = gap_table(guidance, pairs, seed=args.seed)
    print(f"{args.checkpoint} against {args.prior}: {len(prompts)} {args.split} prompts x {args.views} views at "
          f"{size}^2, generator rendered {args.supersample}x{args.supersample} supersampled\n")
    print_gap_table(rows)
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
