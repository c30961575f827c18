"""Turn a training checkpoint into a shippable one: weights + config only, the text encoder referenced where it ships.

    python -m training.publish runs/toyworld-supervised/checkpoints/step-0005000 \
        assets/checkpoints/toyworld-supervised --text-encoder assets/priors/toy-clip \
        --made-by "python -m training.train --config training/configs/toyworld_supervised.toml" \
        --wall-time "66 min" --machine "2-core CPU" [--default]

Why: a training checkpoint carries the optimizer and raw weights (3x the size) and names its text encoder relative
to the run folder. The published folder holds the model weights (EMA when the run kept one), a config whose
text-encoder reference is relative to the published folder, a README (model card) saying how it was made, and the
training prompts (``training_prompts.txt``: the engine names words of a prompt the model never saw). It is written
atomically, and only over nothing or over another checkpoint. Before writing, the new text encoder must give the
same token embeddings as the one the model trained with, so conditioning cannot silently change. ``--default``
makes it what ``from_pretrained()`` loads.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from instant3d.io.checkpoint import CONFIG_NAME, CheckpointError, load_model, save_checkpoint, text_encoder_folder
from instant3d.io.files import atomic_path
from instant3d.pipeline import check_text_encoder_matches
from instant3d.registry import CHECKPOINTS, DEFAULT_POINTER
from instant3d.vocabulary import TRAINING_PROMPTS_NAME
from instant3d.models.text_encoder import TextEncoder, TextEncoderError

from .prompt_sets import load_prompt_set
from .trainer import kept_ema

PROBE_PROMPTS = ["a red cube on top of a blue sphere", "a white snowman with a carrot nose", "zebra 42 ?!"]


def same_encodings(a: TextEncoder, b: TextEncoder, prompts: list[str], atol: float = 1e-5) -> bool:
    """Do two text encoders give the same tokens and pooled embeddings on these prompts?"""
    ta, pa = a.encode(prompts)
    tb, pb = b.encode(prompts)
    return ta.shape == tb.shape and torch.allclose(ta, tb, atol=atol) and torch.allclose(pa, pb, atol=atol)


def model_card(name: str, meta: dict, args, ema: bool) -> str:
    training = meta.get("training", {})
    lines = [
        f"# {name}",
        "",
        f"An instant3d generator checkpoint (config.json + model.safetensors, "
        f"{'EMA weights' if ema else 'the trained weights'}), trained by this project.",
        "",
        f"- made by: `{args.made_by}`" if args.made_by else "- made by: (not recorded)",
        f"- training step: {training.get('step', '?')}, views per prompt: "
        f"{training.get('views_per_prompt', float('nan')):.1f}, prompt set: {training.get('prompt_set', '?')}",
        f"- wall time: {args.wall_time or '?'} on {args.machine or '?'}",
        f"- text encoder: `{meta['text_encoder']}` (relative to this folder)",
        f"- published with: `python -m training.publish {args.checkpoint} {args.out} --text-encoder "
        f"{args.text_encoder}`",
    ]
    calibration = meta.get("colour_calibration")
    if calibration:  # the albedo head was refitted after training (toyworld.colour_calibration)
        before, after = (calibration.get(k, {}).get("naming_accuracy", float("nan")) for k in ("before", "after"))
        lines.insert(-1, f"- albedo head then refitted on the training prompts' true colours: "
                         f"`{calibration['command']}` (naming accuracy on its fitting points "
                         f"{before:.3f} -> {after:.3f})")
    if args.notes:
        lines += ["", args.notes]
    return "\n".join(lines) + "\n"


def training_prompts(source: Path, meta: dict) -> list[str]:
    """The prompts the checkpoint trained on: its own list, else its prompt set's split rebuilt; [] if neither."""
    path = source / TRAINING_PROMPTS_NAME
    if path.is_file():
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    training = meta.get("training", {})
    if not training.get("prompt_set"):
        return []
    try:
        train, _ = load_prompt_set(training["prompt_set"], file=training.get("prompt_file", ""),
                                   train_fraction=training.get("train_fraction", 0.6),
                                   seed=training.get("split_seed", 0))
    except (ValueError, OSError) as exc:
        print(f"warning: no {TRAINING_PROMPTS_NAME} ({exc}); the engine will not name unknown words",
              file=sys.stderr)
        return []
    return train


def check_target(source: Path, out: Path, text_encoder: Path, default: bool) -> None:
    """Refuse before anything is written: publishing replaces ``out`` wholesale."""
    src, dst, enc = source.resolve(), out.resolve(), text_encoder.resolve()
    if default and dst.parent != CHECKPOINTS.resolve():
        raise CheckpointError(f"--default needs the checkpoint inside {CHECKPOINTS}, not {out.parent}")
    if dst == src or dst in src.parents:
        raise CheckpointError(f"{out} is (or holds) the checkpoint being published; publish somewhere else")
    if dst == enc or dst in enc.parents:
        raise CheckpointError(f"{out} holds the text encoder {text_encoder}; publish somewhere else")
    if dst.exists() and not (dst / CONFIG_NAME).is_file():
        raise CheckpointError(f"{out} exists and is not a checkpoint; refusing to replace it (give a new folder)")


def publish(args) -> Path:
    source, out, encoder = Path(args.checkpoint), Path(args.out), Path(args.text_encoder)
    check_target(source, out, encoder, args.default)
    model, meta = load_model(source, "cpu")
    trained_with = TextEncoder.from_folder(text_encoder_folder(source, meta))
    shipped = TextEncoder.from_folder(encoder)
    check_text_encoder_matches(model.config, shipped)
    prompts = training_prompts(source, meta)
    if not same_encodings(trained_with, shipped, PROBE_PROMPTS + prompts[:: max(1, len(prompts) // 16)]):
        raise CheckpointError(
            f"{encoder} encodes prompts differently from {text_encoder_folder(source, meta)}, the text "
            "encoder this checkpoint trained with: publish it with that encoder (or a copy of it)"
        )
    ema = kept_ema(source, meta)
    reference = os.path.relpath(encoder.resolve(), out.resolve())
    extra = {k: v for k, v in meta.items() if k not in ("_class_name", "_format_version", "model", "text_encoder")}
    extra["published_from"] = {"step_folder": source.name, "made_by": args.made_by, "wall_time": args.wall_time,
                               "machine": args.machine}
    files = {"README.md": model_card(out.name, {**meta, "text_encoder": reference}, args, ema).encode()}
    if prompts:
        files[TRAINING_PROMPTS_NAME] = ("\n".join(prompts) + "\n").encode()
    save_checkpoint(model, out, text_encoder_path=reference, extra=extra, extra_files=files)
    if args.default:
        with atomic_path(DEFAULT_POINTER) as tmp:
            Path(tmp).write_text(out.name + "\n")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a training checkpoint folder (runs/<name>/checkpoints/step-N)")
    parser.add_argument("out", help="where to publish it, e.g. assets/checkpoints/<name>")
    parser.add_argument("--text-encoder", required=True, help="the text encoder folder the published copy references")
    parser.add_argument("--made-by", default="", help="the command that trained it (for the model card)")
    parser.add_argument("--wall-time", default="")
    parser.add_argument("--machine", default="")
    parser.add_argument("--notes", default="", help="more text for the model card")
    parser.add_argument("--default", action="store_true", help="make it the default (assets/checkpoints/DEFAULT)")
    args = parser.parse_args(argv)
    try:
        folder = publish(args)
    except (CheckpointError, TextEncoderError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"published {folder}" + (" (the default)" if args.default else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
