"""Evaluate a checkpoint with a CLIP model it never trained with (paper section 4.3).

    python -m training.evaluate --checkpoint runs/x/checkpoints/step-0040000 --clip /models/clip-vit-large-patch14 \
        [--set animals] [--split held_out] [--views 4] [--size 224] [--limit 200] [--output metrics.json]

For each evaluated prompt, ``--views`` renders at evenly spaced azimuths are scored against the text embeddings of
the whole query set (every prompt of the set). The default views (VIEWS) are lit by the display light, at elevation
30 deg and azimuths 45 + 90 k: face-on and unlit, a cube and a cylinder are the same rectangle, a pyramid and a cone
the same triangle, and even the toy world's exact scenes score only 0.79 (docs/toyworld.md, "Quality report").
- retrieval probability: softmax over the query set of CLIP's logits (its own logit scale, 100 for OpenAI CLIP),
  the probability of the true prompt, averaged over views and prompts (the paper's CLIP-RP);
- R-precision: how often the true prompt has the highest score.
Views-PP (iterations x batch / training prompts) is read from the checkpoint.

The toy world's fuller report (IoU, colour, Janus rate, with the exact scenes as a ceiling) is
``python -m toyworld.report``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402

from instant3d.io.checkpoint import read_checkpoint_config  # noqa: E402
from instant3d.pipeline import Instant3DPipeline  # noqa: E402
from instant3d.render.shading import SHADINGS  # noqa: E402

from .clip_model import CLIPScorer  # noqa: E402
from .prompt_sets import load_prompt_set  # noqa: E402


VIEWS = dict(elevation=30.0, azimuth_offset=45.0, shading="lit")  # views that show the shape
FLAT_VIEWS = dict(elevation=15.0, azimuth_offset=0.0, shading="albedo")  # the first protocol, kept for comparison


@torch.no_grad()
def clip_retrieval(pipe: Instant3DPipeline, clip: CLIPScorer, prompts: list[str], queries: list[str], views: int = 4,
                   size: int = 224, seed: int = 0, elevation: float = VIEWS["elevation"],
                   azimuth_offset: float = VIEWS["azimuth_offset"], shading: str = VIEWS["shading"]) -> dict:
    """R-precision and retrieval probability of ``prompts`` among ``queries`` (which must contain them), from
    ``views`` renders at azimuths ``azimuth_offset + 360 k / views`` and one elevation; ``top1`` maps each prompt
    to the query each of its views retrieved."""
    index = {q: i for i, q in enumerate(queries)}
    missing = [p for p in prompts if p not in index]
    if missing:
        raise ValueError(f"evaluated prompts must be in the query set; missing e.g. {missing[0]!r}")
    text = clip.text_features(queries)
    scale = float(clip.model.logit_scale.exp())
    hits, probs, top1 = [], [], {}
    azimuths = [azimuth_offset + 360.0 * k / views for k in range(views)]
    for prompt in prompts:
        out = pipe(prompt, seed=seed)
        renders = out.render_many(azimuths, [elevation] * views, size, shading=shading)
        images = torch.stack([torch.from_numpy(img) for img in renders])
        feats = clip.image_features(images.permute(0, 3, 1, 2).float().div(255).to(clip.device))
        logits = scale * feats @ text.T  # (views, queries)
        p = logits.softmax(dim=-1)[:, index[prompt]]
        probs += p.tolist()
        hits += (logits.argmax(dim=-1) == index[prompt]).float().tolist()
        top1[prompt] = [queries[i] for i in logits.argmax(dim=-1).tolist()]
        pipe.cache.clear()
    return {"r_precision": sum(hits) / len(hits), "retrieval_probability": sum(probs) / len(probs),
            "prompts": len(prompts), "queries": len(queries), "views_per_prompt_scored": views, "top1": top1,
            "views": dict(elevation=elevation, azimuth_offset=azimuth_offset, shading=shading)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--clip", required=True, help="evaluation CLIPModel folder")
    parser.add_argument("--set", default=None, help="prompt set (default: the one the checkpoint trained on)")
    parser.add_argument("--file", default="", help="prompt file for --set file")
    parser.add_argument("--split", choices=["held_out", "train", "all"], default=None,
                        help="default: held_out")
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--elevation", type=float, default=VIEWS["elevation"],
                        help="degrees")
    parser.add_argument("--azimuth-offset", type=float, default=VIEWS["azimuth_offset"],
                        help="first view's azimuth (degrees; 0 = the front)")
    parser.add_argument("--shading", choices=SHADINGS, default=VIEWS["shading"],
                        help="lit (the display light) or albedo (flat colour)")
    parser.add_argument("--limit", type=int, default=0, help="evaluate at most this many prompts (0 = all)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--output", default=None, help="also write the metrics to this JSON file")
    args = parser.parse_args(argv)
    _, meta = read_checkpoint_config(args.checkpoint)
    training = meta.get("training", {})
    name = args.set or training.get("prompt_set") or "animals"
    same_set = name == training.get("prompt_set")  # then use the split the checkpoint trained with
    train, held_out = load_prompt_set(
        name, file=args.file or (training.get("prompt_file", "") if same_set else ""),
        train_fraction=training.get("train_fraction", 0.6) if same_set else 0.6,
        seed=training.get("split_seed", 0) if same_set else 0,
    )
    args.split = args.split or "held_out"
    prompts = {"held_out": held_out, "train": train, "all": train + held_out}[args.split]
    if not prompts:
        print(f"error: the {args.split} split of {name!r} is empty", file=sys.stderr)
        return 2
    if args.limit:
        prompts = prompts[: args.limit]
    pipe = Instant3DPipeline.from_pretrained(args.checkpoint, device=args.device)
    clip = CLIPScorer.from_folder(args.clip, pipe.device)
    metrics = clip_retrieval(pipe, clip, prompts, train + held_out, args.views, args.size,
                             elevation=args.elevation, azimuth_offset=args.azimuth_offset, shading=args.shading)
    metrics.pop("top1")  # per prompt; toyworld.report --confusions summarises it
    metrics.update(prompt_set=name, split=args.split, training_views_per_prompt=training.get("views_per_prompt"),
                   training_step=training.get("step"), checkpoint=str(args.checkpoint))
    print(json.dumps(metrics, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
