"""The paper's two ablations, in miniature, with the toy-world SDS recipe.

    python -m toyworld.ablations sigmoid --out runs/ablation-sigmoid [--steps 600 --every 100 --iou 0.3]
    python -m toyworld.ablations perpneg --out runs/ablation-perpneg [--steps 600]
    python -m toyworld.ablations estimator --out runs/pilot-estimators [--steps 600 --prompts 450 --held-out 30]

- ``sigmoid``: the same SDS run on a spread of training prompts with the scaled sigmoid (alpha annealed from
  ``optim.alpha_start`` to 1 over the first half of the run) and with the plain sigmoid (alpha 1 throughout).
  Every ``--every`` steps the geometry IoU of the raw weights is scored on those prompts; the table gives the IoU
  curves and the first scored step at which each variant reaches ``--iou``.
- ``perpneg``: the same SDS run on the front-facing training prompts (snowman, duck, house) with no, fixed and
  adaptive Perp-Neg; the final weights' Janus rate under the evaluation CLIP (training never sees it) and IoU.
- ``estimator``: the pilots that choose the score estimator (``prior.estimator``: SDS, CSD, NFSD, ASD;
  training/guidance.py says what each compares). The same SDS run on a spread of training prompts with each
  estimator; the final weights scored on a spread of *held-out* prompts (``--held-out``): IoU, colour accuracy
  and R-precision (lit views, among all toy-world prompts) under the evaluation CLIP. Run it once per prior / CFG
  with overrides, e.g. ``prior.folder="assets/priors/toy-diffusion-64" prior.guidance_scale=3``. When the
  overrides set ``model.init_checkpoint`` (pilots that fine-tune), that checkpoint is scored too, as "(start)".

Variants differ only in the ablated setting: same seed, prompts, cameras and steps. Each variant is an ordinary
training run under ``--out``/<variant> (re-running resumes it, then re-scores). Extra ``section.key=value``
arguments override the recipe for every variant (e.g. a smaller preset for a quick look, or
``model.init_checkpoint=...`` to ablate a fine-tuning of a trained checkpoint).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

RECIPE = "training/configs/toyworld_sds.toml"
SIGMOID_VARIANTS = {"scaled sigmoid": [], "plain sigmoid": ["optim.alpha_start=1.0"]}
PERPNEG_VARIANTS = {name: [f'prior.perp_neg="{name}"'] for name in ("none", "fixed", "adaptive")}
ESTIMATOR_VARIANTS = {name: [f'prior.estimator="{name}"'] for name in ("sds", "csd", "nfsd", "asd")}

log = logging.getLogger("instant3d.ablations")


def steps_to_reach(curve: list[tuple[int, float]], threshold: float) -> int | None:
    """The first scored step whose IoU is at least ``threshold`` (None if none is)."""
    return next((step for step, iou in sorted(curve) if iou >= threshold), None)


def print_table(columns: list[str], rows: list[list[str]]) -> None:
    """A markdown table on stdout."""
    print("| " + " | ".join(columns) + " |")
    print("|" + " --- |" * len(columns))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def ablation_prompts(kind: str, count: int) -> list[str]:
    """Training-split prompts: a spread over all kinds (sigmoid, estimator), or the front-facing ones (perpneg)."""
    from toyworld import prompt_split, scene_for_prompt
    from toyworld.scenes import spread_subset

    train, _ = prompt_split()
    if kind == "perpneg":
        train = [p for p in train if scene_for_prompt(p).front_facing]
    return spread_subset(train, count)


def train_variant(folder: Path, prompt_file: Path, steps: int, every: int, overrides: list[str]) -> Path:
    """One ablation run (resumes if ``folder`` holds checkpoints); returns its checkpoints folder. A folder whose
    run was made with other overrides (another prior or CFG, say) is refused rather than resumed and re-scored
    under the new settings' name."""
    from training.config import load_config
    from training.trainer import Trainer

    record = folder / "overrides.json"
    if record.is_file() and json.loads(record.read_text()) != overrides:
        raise SystemExit(f"{folder} holds a run made with other settings ({json.loads(record.read_text())}, not "
                         f"{overrides}); give this comparison its own --out")
    folder.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(overrides))

    cfg = load_config(RECIPE, [
        'prompts.set="file"', f'prompts.file="{prompt_file}"', "prompts.train_fraction=1.0", "prompts.validation=[]",
        f'run.output_dir="{folder}"', f"optim.steps={steps}", f"run.checkpoint_every={every}",
        "run.keep_checkpoints=1000", f"run.validate_every={10 * steps}",
        "optim.ema_decay=0.0",  # checkpoints hold the weights of that step, not an average that lags behind
        *overrides,
    ])
    trainer = Trainer(cfg)
    if trainer.step < steps:
        trainer.train()
    return trainer.ckpt_dir


def score_checkpoint(checkpoint: Path, prompts: list[str], clip=None) -> dict:
    """IoU and colour of ``prompts`` with a checkpoint's weights (and their Janus rate when ``clip`` is given)."""
    from instant3d.pipeline import Instant3DPipeline
    from .report import object_scores

    return object_scores(Instant3DPipeline.from_pretrained(checkpoint), prompts, clip)


def run_sigmoid(args, prompt_file: Path, prompts: list[str]) -> dict:
    curves = {}
    for name, overrides in SIGMOID_VARIANTS.items():
        anneal = [f"optim.alpha_end={max(1, args.steps // 2)}"]  # alpha reaches 1 halfway through the run
        ckpts = train_variant(args.out / name.replace(" ", "-"), prompt_file, args.steps, args.every,
                              anneal + overrides + args.overrides)
        curve = []
        for folder in sorted(ckpts.glob("step-*")):
            curve.append((int(folder.name.split("-")[1]), score_checkpoint(folder, prompts)["iou"]))
            log.info("%s %s: IoU %.3f", name, folder.name, curve[-1][1])
        curves[name] = curve
    steps = sorted({s for curve in curves.values() for s, _ in curve})
    print(f"IoU on {len(prompts)} training prompts (raw weights, seed 0)\n")
    print("| step | " + " | ".join(curves) + " |")
    print("| --- |" + " --- |" * len(curves))
    for s in steps:
        print(f"| {s} | " + " | ".join(f"{dict(c).get(s, float('nan')):.3f}" for c in curves.values()) + " |")
    reach = {name: steps_to_reach(c, args.iou) for name, c in curves.items()}
    print("\n" + "; ".join(f"{name}: IoU {args.iou} at step {r if r is not None else f'> {args.steps}'}"
                           for name, r in reach.items()))
    return {"threshold": args.iou, "curves": curves, "steps_to_threshold": reach}


def run_perpneg(args, prompt_file: Path, prompts: list[str]) -> dict:
    from training.clip_model import CLIPScorer

    clip = CLIPScorer.from_folder(args.clip)
    results = {}
    for name, overrides in PERPNEG_VARIANTS.items():
        ckpts = train_variant(args.out / name, prompt_file, args.steps, args.steps, overrides + args.overrides)
        final = sorted(ckpts.glob("step-*"))[-1]
        results[name] = score_checkpoint(final, prompts, clip)
        log.info("perp-neg %s: %s", name, results[name])
    print(f"Janus rate on {len(prompts)} front-facing training prompts after {args.steps} steps "
          f"(evaluation CLIP: {args.clip})\n")
    print_table(["Perp-Neg", "Janus rate", "IoU"],
                [[name, f"{m['janus_rate']:.2f} ({m['janus_objects']})", f"{m['iou']:.3f}"]
                 for name, m in results.items()])
    return results


def held_out_scores(checkpoint: Path, prompts: list[str], clip) -> dict:
    """IoU, colour accuracy and R-precision (the report's lit views, among all toy-world prompts) of held-out
    ``prompts`` with a checkpoint's weights."""
    from instant3d.pipeline import Instant3DPipeline
    from training.evaluate import VIEWS, clip_retrieval
    from .report import object_scores
    from .scenes import all_prompts

    pipe = Instant3DPipeline.from_pretrained(checkpoint)
    scores = object_scores(pipe, prompts)
    scores["r_precision"] = clip_retrieval(pipe, clip, prompts, all_prompts(), 4, 64, **VIEWS)["r_precision"]
    return scores


def run_estimator(args, prompt_file: Path, prompts: list[str]) -> dict:
    from training.clip_model import CLIPScorer
    from .scenes import prompt_split, spread_subset

    clip = CLIPScorer.from_folder(args.clip)
    held_out = spread_subset(prompt_split()[1], args.held_out)
    results = {}
    from training.config import load_config

    start = load_config(RECIPE, args.overrides).model.init_checkpoint
    if start:  # a fine-tune's pilots are read against the checkpoint they all start from, scored the same way
        results["(start)"] = held_out_scores(Path(start), held_out, clip)
    for name, overrides in ESTIMATOR_VARIANTS.items():
        ckpts = train_variant(args.out / name, prompt_file, args.steps, args.steps, overrides + args.overrides)
        results[name] = held_out_scores(sorted(ckpts.glob("step-*"))[-1], held_out, clip)
        log.info("estimator %s: %s", name, results[name])
    print(f"{len(held_out)} held-out prompts after {args.steps} steps on {len(prompts)} training prompts "
          f"(evaluation CLIP: {args.clip}; overrides: {' '.join(args.overrides) or 'none'})\n")
    print_table(["estimator", "IoU", "colour accuracy", "R-precision"],
                [[name, *(f"{m[k]:.3f}" for k in ("iou", "colour_accuracy", "r_precision"))]
                 for name, m in results.items()])
    return {"held_out": held_out, "scores": results}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ablation", choices=("sigmoid", "perpneg", "estimator"))
    parser.add_argument("--out", type=Path, required=True, help="folder for the variants' runs and results.json")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=100, help="sigmoid: score IoU every this many steps")
    parser.add_argument("--iou", type=float, default=0.3, help="sigmoid: the IoU whose first step is reported")
    parser.add_argument("--prompts", type=int, default=24, help="how many training prompts the runs use")
    parser.add_argument("--held-out", type=int, default=30, help="estimator: how many held-out prompts are scored")
    parser.add_argument("--clip", default="assets/priors/eval-clip",
                        help="perpneg, estimator: the evaluation CLIP folder")
    parser.add_argument("overrides", nargs="*", help="section.key=value for every variant, e.g. optim.lr=3e-4")
    args = parser.parse_intermixed_args(argv)
    if args.steps < 1 or args.every < 1 or args.held_out < 1:
        parser.error("--steps, --every and --held-out must be positive")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    prompts = ablation_prompts(args.ablation, args.prompts)
    prompt_file = args.out / "prompts.txt"
    prompt_file.write_text("\n".join(prompts) + "\n")
    run = {"sigmoid": run_sigmoid, "perpneg": run_perpneg, "estimator": run_estimator}[args.ablation]
    results = {"ablation": args.ablation, "steps": args.steps, "prompts": prompts, "overrides": args.overrides,
               **run(args, prompt_file, prompts)}
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
