"""Refit a toy-world generator's albedo head (the three albedo rows of the field MLP's last layer: 3 x (hidden + 1)
numbers) on the exact surface colours of the *training* prompts, so that each surface point's colour lands nearest
its own palette colour. Nothing else changes: not the density, not the triplane generator.

    python -m toyworld.colour_calibration --checkpoint assets/checkpoints/toyworld-supervised-details \
        --out runs/toyworld-supervised-calibrated [--seeds 3] [--steps 500] [--temperature 0.01]

Why (docs/toyworld.md, "Colour calibration"): the fine-tunes that taught the default its small parts left held-out
bodies whose colour sits near a part's colour (yellow next to the carrot noses) named as the part's colour, a
yellow house reading orange, while their mean colour error barely moved. Fitting the head to the mean colour error
alone lowers that error and still loses names; so the loss adds, to the absolute sRGB error, a cross-entropy over
the palette: each point's softmax over -(sRGB distance to each palette colour)^2 / temperature, against its true
colour's name. The fitting points are the generator's own objects (noise seeds 0 .. seeds-1) for the training
split only, so held-out prompts still measure what the model composes.

The output is a complete checkpoint folder (written atomically; its text-encoder reference made relative to the new
place), with the calibration recorded in its config.json under ``colour_calibration``. Ship it with
``python -m training.publish``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from instant3d.io.checkpoint import CONFIG_NAME, CheckpointError, load_model, save_checkpoint, text_encoder_folder
from instant3d.models.field import scaled_sigmoid
from instant3d.models.text_encoder import TextEncoder
from instant3d.pipeline import Instant3DPipeline
from instant3d.render.color import linear_to_srgb
from instant3d.vocabulary import TRAINING_PROMPTS_NAME

from training.trainer import kept_ema

from .metrics import PALETTE, colour_names, surface_points
from .scenes import COLOURS, prompt_split, scene_for_prompt


@dataclass
class SurfaceSamples:
    """What the albedo head sees at exact surface points: the MLP's last hidden activations (N, H), the true
    linear albedo there (N, 3), and whether a small named part lies in line with each point along z (N,)."""

    hidden: torch.Tensor
    truth: torch.Tensor
    in_line: torch.Tensor


@torch.no_grad()
def surface_samples(pipe: Instant3DPipeline, prompts: list[str], seeds: int, per_object: int,
                    seed: int = 0, with_parts: bool = False) -> SurfaceSamples:
    """Up to ``per_object`` random true surface points of each prompt's object for noise seeds 0 .. seeds-1; only
    the bodies' (colours a prompt names), unless ``with_parts`` (noses, beaks, doors and eyes too)."""
    gen = torch.Generator().manual_seed(seed)
    hidden, truth, in_line = [], [], []
    for prompt in prompts:
        scene = scene_for_prompt(prompt)
        for noise_seed in range(seeds):
            out = pipe(prompt, seed=noise_seed)
            points = surface_points(scene, 48, out.bound)
            if not with_parts:
                points = points[colour_names(scene.albedo(points)) < len(COLOURS)]
            if len(points) > per_object:
                points = points[torch.randperm(len(points), generator=gen)[:per_object]]
            field = out.field
            x = field.aggregate(field.plane_features(out.triplane, points[None].to(out.triplane)))[0]
            for layer in field.layers[:-1]:
                x = F.softplus(layer(x))
            hidden.append(x.cpu())
            truth.append(scene.albedo(points))
            in_line.append(scene.in_line_with_parts(points, out.bound))
            pipe.cache.clear()
    return SurfaceSamples(torch.cat(hidden), torch.cat(truth), torch.cat(in_line))


def check_calibratable(field) -> None:
    """The fit models a scaled-sigmoid head whose albedo is linear; refuse any other (a converted official model)."""
    if field.cfg.albedo_activation != "scaled_sigmoid":
        raise CheckpointError(f"colour calibration fits a scaled-sigmoid albedo head, not "
                              f"{field.cfg.albedo_activation!r}: calibrate a checkpoint this project trained")
    if field.cfg.albedo_space != "linear":
        raise CheckpointError(f"colour calibration fits linear albedo, not {field.cfg.albedo_space!r} colours: "
                              "calibrate a checkpoint this project trained")


def head_albedo(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, alpha: float) -> torch.Tensor:
    """Linear albedo in [0, 1] from the last hidden activations, as ``TriplaneField.activate`` gives it."""
    return scaled_sigmoid(hidden @ weight.T + bias, alpha).clamp(0, 1)


def calibration_loss(albedo: torch.Tensor, truth: torch.Tensor, temperature: float,
                     balanced: bool = False, point_weight: torch.Tensor | None = None,
                     cast_weight: float = 0.0) -> torch.Tensor:
    """Mean absolute sRGB error plus (``temperature`` > 0) the palette cross-entropy (module docstring);
    ``balanced``: each true colour's points weigh alike in the cross-entropy, so that the few points of a nose or
    a door count as much as a body's; ``point_weight`` (N,): each point's weight in both means; ``cast_weight``:
    plus that times the largest of the true colours' mean signed sRGB errors (a cast), over colours and channels.
    One head serves every colour, and fitting the others cost white its red: it went mint."""
    shown, wanted = linear_to_srgb(albedo), linear_to_srgb(truth)
    point_weight = torch.ones(len(truth)) if point_weight is None else point_weight
    loss = ((shown - wanted).abs().mean(dim=-1) * point_weight).sum() / point_weight.sum()
    names = colour_names(truth) if temperature > 0 or cast_weight > 0 else None
    if temperature > 0:
        weight = point_weight
        if balanced:
            counts = torch.bincount(names, weights=point_weight, minlength=len(PALETTE))
            weight = point_weight / counts[names]
        logits = -torch.cdist(shown, linear_to_srgb(PALETTE)).pow(2) / temperature
        loss = loss + (F.cross_entropy(logits, names, reduction="none") * weight).sum() / weight.sum()
    if cast_weight > 0:
        loss = loss + cast_weight * colour_casts(shown, wanted, names, point_weight).abs().max()
    return loss


def colour_casts(shown: torch.Tensor, wanted: torch.Tensor, names: torch.Tensor,
                 point_weight: torch.Tensor | None = None) -> torch.Tensor:
    """(colours present, 3): each true colour's weighted mean signed sRGB error, its cast (mint white: red < 0)."""
    point_weight = torch.ones(len(names)) if point_weight is None else point_weight
    counts = torch.bincount(names, weights=point_weight, minlength=len(PALETTE))
    signed = torch.zeros(len(PALETTE), 3).index_add(0, names, (shown - wanted) * point_weight[:, None])
    present = counts > 0
    return signed[present] / counts[present, None]


def naming_accuracy(albedo: torch.Tensor, truth: torch.Tensor) -> float:
    return float((colour_names(albedo) == colour_names(truth)).float().mean())


def fit_albedo_head(field, samples: SurfaceSamples, steps: int, temperature: float, lr: float = 1e-3,
                    balanced: bool = False, in_line_weight: float = 0.0,
                    cast_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Full-batch Adam on the albedo rows (effective weight (3, H), bias (3,)) from their current values; returns
    them and the error and naming accuracy on the fitting points before and after. ``in_line_weight`` W: the points
    in line with a part along z weigh 1 + W (with ``--with-parts``, the part's own points too), so the fit keeps the
    part's colour off the wall behind it."""
    point_weight = 1.0 + in_line_weight * samples.in_line.float()
    last, alpha = field.layers[-1], field.cfg.albedo_alpha
    weight = last.effective_weight()[1:].detach().clone().requires_grad_()
    bias = last.bias[1:].detach().clone().requires_grad_()
    optimizer = torch.optim.Adam([weight, bias], lr=lr)

    def measure() -> dict:
        with torch.no_grad():
            albedo = head_albedo(samples.hidden, weight, bias, alpha)
            shown, wanted = linear_to_srgb(albedo), linear_to_srgb(samples.truth)
            casts = colour_casts(shown, wanted, colour_names(samples.truth))
            return {"srgb_error": float((shown - wanted).abs().mean()),
                    "naming_accuracy": naming_accuracy(albedo, samples.truth), "worst_cast": float(casts.abs().max())}

    stats = {"before": measure()}
    for _ in range(steps):
        loss = calibration_loss(head_albedo(samples.hidden, weight, bias, alpha), samples.truth, temperature,
                                balanced, point_weight, cast_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    stats["after"] = measure()
    return weight.detach(), bias.detach(), stats


@torch.no_grad()
def write_albedo_head(field, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Put the fitted rows into the field's last layer (its stored weight is the effective one / gain)."""
    last = field.layers[-1]
    last.weight[1:] = weight / last.gain
    last.bias[1:] = bias


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="the toy-world generator checkpoint to calibrate")
    parser.add_argument("--out", required=True, help="the new checkpoint folder (not the input)")
    parser.add_argument("--seeds", type=int, default=3, help="noise seeds per training prompt")
    parser.add_argument("--points", type=int, default=300, help="surface points per object")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--temperature", type=float, default=0.01,
                        help="of the palette cross-entropy (0: the absolute sRGB error alone)")
    parser.add_argument("--balanced", action="store_true",
                        help="every true colour weighs alike in the cross-entropy (the parts' few points included)")
    parser.add_argument("--with-parts", action="store_true",
                        help="fit the small parts' surface points too (by default the bodies' only: fitting the "
                             "parts put a door-coloured patch on the backs of houses)")
    parser.add_argument("--in-line-weight", type=float, default=0.0,
                        help="the points in line with a small part along z (the wall behind a door, the back of "
                             "a snowman's head; with --with-parts the part's own too) weigh 1 + W: the fit then "
                             "keeps the part's colour off the wall")
    parser.add_argument("--cast-weight", type=float, default=0.0,
                        help="weight of the worst colour cast (a true colour's mean signed sRGB error) in the loss")
    parser.add_argument("--limit", type=int, default=0, help="the first N training prompts only (tests)")
    args = parser.parse_args(argv)
    source, out = Path(args.checkpoint), Path(args.out)
    if out.resolve() == source.resolve():
        raise CheckpointError(f"--out {out} is the checkpoint being calibrated; write to a new folder and publish it")
    if out.exists() and not (out / CONFIG_NAME).is_file():
        raise CheckpointError(f"{out} exists and is not a checkpoint; refusing to replace it (give a new folder)")
    model, meta = load_model(source)
    check_calibratable(model.field)
    encoder_folder = text_encoder_folder(source, meta)
    pipe = Instant3DPipeline(model, TextEncoder.from_folder(encoder_folder))
    train, _ = prompt_split()
    prompts = train[: args.limit] if args.limit else train
    samples = surface_samples(pipe, prompts, args.seeds, args.points, with_parts=args.with_parts)
    weight, bias, stats = fit_albedo_head(model.field, samples, args.steps, args.temperature,
                                          balanced=args.balanced, in_line_weight=args.in_line_weight,
                                          cast_weight=args.cast_weight)
    write_albedo_head(model.field, weight, bias)
    command = " ".join(["python -m toyworld.colour_calibration", *(argv if argv is not None else sys.argv[1:])])
    record = {"command": command, "from": source.name, "ema": kept_ema(source, meta),  # for the model card
              "prompts": len(prompts), "seeds": args.seeds,
              "points": len(samples.truth), "steps": args.steps, "temperature": args.temperature,
              "balanced": args.balanced, "with_parts": args.with_parts,
              "in_line_weight": args.in_line_weight, "cast_weight": args.cast_weight,
              "in_line_points": int(samples.in_line.sum()), **stats}
    extra = {k: v for k, v in meta.items() if k not in ("_class_name", "_format_version", "model", "text_encoder")}
    extra["colour_calibration"] = record
    files = {}
    if (source / TRAINING_PROMPTS_NAME).is_file():
        files[TRAINING_PROMPTS_NAME] = (source / TRAINING_PROMPTS_NAME).read_bytes()
    reference = os.path.relpath(encoder_folder.resolve(), out.resolve())
    save_checkpoint(model, out, text_encoder_path=reference, extra=extra, extra_files=files)
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
