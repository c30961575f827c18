"""Measure a toy-world diffusion prior the way SDS will use it: does it draw the prompt, and do its view words work?

    python -m toyworld.prior_eval --prior assets/priors/toy-diffusion --clip assets/priors/eval-clip \
        [--cfg 1.5 3 5 7.5 15 30] [--samples 2] [--steps 25] [--grid docs/prior-samples.png]

Prints a markdown table, one row per split (held-out / train) and CFG:
- sample R-precision: DDIM samples of "<prompt>, front view" (``--samples`` noise seeds each) are scored by an
  evaluation CLIP that no prior trained with, against the text of all 750 prompts; the true prompt must score
  highest. The ground-truth row scores exact renders from the same camera range the same way (the ceiling);
- view accuracy: for the 30 front-facing prompts, samples of ", front view" and ", back view" from the same noise;
  a sample counts as right when a small view judge trained on ground-truth renders (``view_judge``) puts it on
  its caption's side (chance 0.5; the judge's own accuracy on fresh ground-truth renders is printed as the
  ceiling; the evaluation CLIP could not serve: at 32^2 it tells true fronts from backs only 65 % of the time);
  with ``--perp-neg`` the view rows are also measured with the captions' views guided by Perp-Neg, exactly as SDS
  guides its renders (threestudio's view blend and negative weights at azimuth 0 / 180, elevation 15);
- diffusion-classifier accuracy per attribute on ground-truth renders (``prior_probe``), one row per split.
and writes a PNG grid of samples (rows: prompts; columns: front / back view at each CFG of ``--grid-cfg``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from instant3d.render.cameras import orbit_cameras  # noqa: E402
from instant3d.render.color import linear_to_srgb  # noqa: E402

from training.clip_model import CLIPScorer  # noqa: E402
from training.guidance import DiffusionGuidance  # noqa: E402
from training.perpneg import perp_neg_guidance, view_blend  # noqa: E402
from .prior_probe import diffusion_classifier, probe_images, view_probe_images  # noqa: E402
from .render import render_scene  # noqa: E402
from .scenes import all_prompts, prompt_split, scene_for_prompt, spread_subset  # noqa: E402
from .view_judge import JUDGE_SIZE, judged_front, train_view_judge  # noqa: E402

GRID_PROMPTS = ("a red cube", "a large green sphere", "a small yellow cone", "a blue torus",
                "a red cube on top of a blue sphere", "a yellow pyramid on top of a white cylinder",
                "a white snowman with a carrot nose", "a yellow duck with an orange beak", "a blue house with a door")


def _perp_neg_step(guidance: DiffusionGuidance, x, t, prompts: list[str], azimuth: float, cfg: float,
                   elevation: float = 15.0) -> torch.Tensor:
    """The guided noise prediction SDS uses for ``prompts`` seen from ``azimuth``: the view-blended positive caption
    and the negatives at their Perp-Neg weights (training.guidance, ``perp_neg="fixed"``)."""
    views, uncond = guidance.view_embeddings(prompts)
    blend = view_blend(torch.full((len(prompts),), float(azimuth)), elevation)
    positive = torch.einsum("bv,bvld->bld", blend.positive.to(views), views)
    negatives = torch.einsum("bkv,bvld->bkld", blend.negatives.to(views), views)
    emb = torch.cat([positive, uncond.expand_as(positive), negatives[:, 0], negatives[:, 1]])
    tt = torch.full((4 * len(prompts),), int(t), device=guidance.device)
    cameras = torch.tensor([[float(azimuth), elevation]]).expand(4 * len(prompts), 2)
    eps_pos, eps_u, eps_n0, eps_n1 = guidance.predict_noise(torch.cat([x] * 4), tt, emb, cameras).chunk(4)
    return perp_neg_guidance(eps_u, eps_pos, torch.stack([eps_n0, eps_n1], dim=1),
                             blend.negative_weights.to(guidance.device), cfg)


@torch.no_grad()
def sample(guidance: DiffusionGuidance, prompts: list[str], cfg: float, steps: int = 25, seed: int = 0,
           batch: int = 64, perp_neg_azimuth: float | None = None, azimuth: float = 0.0,
           elevation: float = 15.0) -> torch.Tensor:
    """DDIM samples (B, 3, H, W) in [0, 1] of full captions, with classifier-free guidance at ``cfg``; the noise of
    sample i depends only on (seed, i), so two caption lists of the same length share their noise. With
    ``perp_neg_azimuth``, ``prompts`` are view-less and each step is guided by Perp-Neg for that azimuth.
    A camera-conditioned prior is also given the camera (``azimuth``, or ``perp_neg_azimuth``, and ``elevation``);
    any other ignores it."""
    from diffusers import DDIMScheduler

    size = guidance.unet.config.sample_size
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(prompts), 3, size, size, generator=gen)
    out = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        # epsilon: predict_noise already converts v-prediction; x0 clipped to [-1, 1], where pixel images live
        ddim = DDIMScheduler.from_config(guidance.scheduler.config, prediction_type="epsilon", clip_sample=True)
        ddim.set_timesteps(steps)
        tokens, _ = guidance.text_encoder.encode(chunk)
        _, uncond = guidance.view_embeddings(chunk[:1])
        emb = torch.cat([tokens, uncond.expand_as(tokens)])
        x = noise[start : start + len(chunk)].to(guidance.device)
        cameras = torch.tensor([[azimuth, elevation]]).expand(2 * len(chunk), 2)  # the uncond half sees it too
        for t in ddim.timesteps:
            if perp_neg_azimuth is not None:
                x = ddim.step(_perp_neg_step(guidance, x, t, chunk, perp_neg_azimuth, cfg, elevation), t,
                              x).prev_sample
                continue
            tt = torch.full((2 * len(chunk),), int(t), device=guidance.device)
            eps = guidance.predict_noise(torch.cat([x, x]), tt, emb, cameras)  # v-prediction converted to epsilon
            cond, unc = eps.chunk(2)
            x = ddim.step(unc + cfg * (cond - unc), t, x).prev_sample
        out.append(((x + 1) / 2).clamp(0, 1).cpu())
    return torch.cat(out)


def r_precision(clip: CLIPScorer, images: torch.Tensor, prompts: list[str], queries: list[str]) -> float:
    text = clip.text_features(queries)
    index = {q: i for i, q in enumerate(queries)}
    with torch.no_grad():
        pred = (clip.image_features(images) @ text.T).argmax(-1)
    truth = torch.tensor([index[p] for p in prompts])
    return float((pred == truth).float().mean())


def ground_truth_front(prompts: list[str], size: int, seed: int = 0) -> torch.Tensor:
    """Exact renders from the front half of the prior's camera range (azimuth within 45 deg of the front, elevation
    0-40 deg) on random backgrounds: sRGB (B, 3, H, W)."""
    gen = torch.Generator().manual_seed(seed)
    images = []
    for prompt in prompts:
        az = 90 * torch.rand(1, generator=gen) - 45
        el = 40 * torch.rand(1, generator=gen)
        cams = orbit_cameras(az, el, 3.3, 40.0)
        img, _ = render_scene(scene_for_prompt(prompt), cams, size, torch.rand(1, 3, generator=gen))
        images.append(linear_to_srgb(img[0]).permute(2, 0, 1))
    return torch.stack(images)


def view_accuracy(guidance, judge, prompts: list[str], cfg: float, samples: int, steps: int,
                  perp_neg: bool = False) -> dict[str, float]:
    """Share of ", front view" / ", back view" samples (the same noise for both) that the view judge, trained on
    ground-truth renders, puts on the side their caption names (chance 0.5), overall and per side: a prior that
    draws every object from the back scores 1 on "back" and 0 on "front". ``perp_neg``: views guided as SDS
    guides them (azimuth 0 and 180) instead of plain CFG on the view caption."""
    fronts, backs = [], []
    for seed in range(samples):
        if perp_neg:
            front = sample(guidance, prompts, cfg, steps, seed, perp_neg_azimuth=0.0)
            back = sample(guidance, prompts, cfg, steps, seed, perp_neg_azimuth=180.0)
        else:
            front = sample(guidance, [p + ", front view" for p in prompts], cfg, steps, seed, azimuth=0.0)
            back = sample(guidance, [p + ", back view" for p in prompts], cfg, steps, seed, azimuth=180.0)
        fronts += judged_front(judge, front).float().tolist()
        backs += (~judged_front(judge, back)).float().tolist()
    return {"all": (sum(fronts) + sum(backs)) / (len(fronts) + len(backs)), "front": sum(fronts) / len(fronts),
            "back": sum(backs) / len(backs)}


def save_grid(guidance, path: Path, cfgs: list[float], steps: int, seed: int = 0, scale: int = 3) -> None:
    """PNG: one row per GRID_PROMPTS entry, columns front / back view at each CFG (same noise across a row)."""
    from PIL import Image, ImageDraw

    from instant3d.io.files import atomic_path

    columns = []
    for cfg in cfgs:
        for view in ("front", "back"):
            columns.append(sample(guidance, [f"{p}, {view} view" for p in GRID_PROMPTS], cfg, steps, seed,
                                  azimuth=0.0 if view == "front" else 180.0))
    size = columns[0].shape[-1] * scale
    label_w, head_h = 300, 36
    grid = Image.new("RGB", (label_w + size * len(columns), head_h + size * len(GRID_PROMPTS)), "white")
    draw = ImageDraw.Draw(grid)
    for c, cfg in enumerate(cfgs):
        draw.text((label_w + 2 * c * size + 4, 4), f"CFG {cfg:g}: front | back", fill="black")
    for r, prompt in enumerate(GRID_PROMPTS):
        draw.text((4, head_h + r * size + size // 2 - 6), prompt, fill="black")
        for c, images in enumerate(columns):
            tile = (images[r].permute(1, 2, 0).numpy() * 255 + 0.5).astype("uint8")
            grid.paste(Image.fromarray(tile).resize((size, size), Image.NEAREST), (label_w + c * size, head_h + r * size))
    with atomic_path(path) as tmp:
        grid.save(tmp)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", required=True, help="the diffusion prior folder (Stable Diffusion layout)")
    parser.add_argument("--clip", required=True, help="an evaluation CLIP the prior never trained with")
    parser.add_argument("--cfg", type=float, nargs="+", default=[1.5, 3, 5, 7.5, 15, 30])
    parser.add_argument("--samples", type=int, default=2, help="noise seeds per prompt")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps")
    parser.add_argument("--limit", type=int, default=0, help="prompts per split, spread evenly (0: all 300)")
    parser.add_argument("--view-limit", type=int, default=0, help="front-facing prompts for view accuracy (0: all 30)")
    parser.add_argument("--grid", default="docs/prior-samples.png", help="PNG grid of samples ('' to skip)")
    parser.add_argument("--grid-cfg", type=float, nargs="+", default=[3, 7.5])
    parser.add_argument("--no-classifier", action="store_true", help="skip the diffusion-classifier rows")
    parser.add_argument("--output", default=None, help="also write the numbers as JSON")
    parser.add_argument("--views-only", action="store_true", help="only the view-accuracy rows (cheap)")
    parser.add_argument("--perp-neg", action="store_true",
                        help="add view-accuracy rows with the views guided by Perp-Neg, as SDS guides them")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    guidance = DiffusionGuidance.from_folder(args.prior, perp_neg="none")
    clip = CLIPScorer.from_folder(args.clip)
    train, held_out = prompt_split()
    splits = {"held-out": held_out, "train": spread_subset(sorted(train), len(held_out))}  # 300 and 300
    if args.limit:  # an even spread over each split, so every kind of prompt stays represented
        splits = {k: spread_subset(sorted(v), args.limit) for k, v in splits.items()}
    queries = all_prompts()
    fronts = spread_subset([p for p in queries if scene_for_prompt(p).front_facing], args.view_limit)
    size = guidance.unet.config.sample_size
    report: dict = {"prior": str(args.prior), "samples": args.samples, "ddim_steps": args.steps, "rows": []}
    judge, ceiling = train_view_judge(JUDGE_SIZE)  # the same judge for priors of any size
    report["view_judge_ceiling"] = ceiling
    print("| split | CFG | sample R-precision | view accuracy (30 front-facing prompts) | prompts x samples |")
    print("| --- | --- | --- | --- | --- |")
    if args.views_only:
        splits = {"held-out": []}
    for split, prompts in splits.items():
        if prompts:
            truth = ground_truth_front(prompts, size, seed=5)
            gt = r_precision(clip, truth, prompts, queries)
            report["rows"].append({"split": split, "cfg": None, "r_precision": gt})
        view = f"{ceiling:.3f} (the judge on true renders)" if split == "held-out" else ""
        print(f"| {split} | ground truth | {gt if prompts else float('nan'):.3f} | {view} | {len(prompts)} x 1 |")
        for cfg in args.cfg:
            row = {"split": split, "cfg": cfg}
            if prompts:
                scores = [r_precision(clip, sample(guidance, [p + ", front view" for p in prompts], cfg, args.steps,
                                                   seed), prompts, queries) for seed in range(args.samples)]
                row.update(r_precision=sum(scores) / len(scores), per_seed=scores)
            if split == "held-out":
                views = view_accuracy(guidance, judge, fronts, cfg, args.samples, args.steps)
                row.update(view_accuracy=views["all"], view_front=views["front"], view_back=views["back"])
            report["rows"].append(row)
            view = (f"{row['view_accuracy']:.3f} (front {row['view_front']:.2f}, back {row['view_back']:.2f})"
                    if "view_accuracy" in row else "")
            print(f"| {split} | {cfg:g} | {row.get('r_precision', float('nan')):.3f} | {view} | "
                  f"{len(prompts)} x {args.samples} |", flush=True)
            if split == "held-out" and args.perp_neg:
                views = view_accuracy(guidance, judge, fronts, cfg, args.samples, args.steps, perp_neg=True)
                report["rows"].append({"split": split, "cfg": cfg, "perp_neg": True, "view_accuracy": views["all"],
                                       "view_front": views["front"], "view_back": views["back"]})
                print(f"| {split} | {cfg:g}, Perp-Neg views | | {views['all']:.3f} (front {views['front']:.2f}, "
                      f"back {views['back']:.2f}) | |", flush=True)
    if not args.no_classifier and not args.views_only:
        print("\n| split | diffusion classifier: colour | shape | size | binding | all one-attribute rivals | "
              "view (front-facing) |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        views = diffusion_classifier(guidance, view_probe_images(fronts, size, 2, seed=2), ("view",))["view"]
        for split, prompts in splits.items():
            acc = diffusion_classifier(guidance, probe_images(prompts, size, 1, seed=1),
                                       ("colour", "shape", "size", "binding"))
            report[f"diffusion_classifier_{split}"] = acc | {"view": views}
            print(f"| {split} | {acc['colour']:.3f} | {acc['shape']:.3f} | {acc.get('size', float('nan')):.3f} | "
                  f"{acc.get('binding', float('nan')):.3f} | {acc['all']:.3f} | {views:.3f} |")
    if args.grid:
        save_grid(guidance, Path(args.grid), args.grid_cfg, args.steps)
        print(f"\nwrote {args.grid}")
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
