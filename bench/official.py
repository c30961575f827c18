"""The paper-size model on this machine: what running the official release (converted) costs, before anyone has
downloaded it. Random weights at the release's exact shapes (the ``official`` preset, 269.8 M parameters) and a
random text encoder of Stable Diffusion 2.1's size (CLIPTextModel, 1024 wide, 23 layers, 77 tokens), so every
stage runs at its real cost; the objects are noise inside the density blob.

    python -m bench.official            # 5 prompts
    python -m bench.official --prompts 2

Prints one Markdown table: median, worst, and the ratio to the ``small`` default's budget where one applies.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from bench.inference import STAGE_BUDGETS, cpu_name, stage_times


def sd21_sized_text_encoder():
    """Stable Diffusion 2.1's text tower shape (OpenCLIP ViT-H/14 text, penultimate-layer output: 23 layers of
    1024) with random weights and the project's byte-level tokenizer, built in memory."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from instant3d.models.text_encoder import TextEncoder, quiet_transformers
    from instant3d.testing.random_models import byte_level_clip_tokenizer

    tokenizer = byte_level_clip_tokenizer(77)
    with quiet_transformers():
        model = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
            num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=1024,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id)).eval()
    return TextEncoder(tokenizer, model)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def main(argv=None) -> int:
    from bench.prompts import BENCH_PROMPTS
    from instant3d.config import preset_config
    from instant3d.models.model import Instant3DModel
    from instant3d.pipeline import Instant3DPipeline

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=5)
    parser.add_argument("--frames", type=int, default=48)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    torch.manual_seed(0)
    model = Instant3DModel(preset_config("official")).eval()
    encoder = sd21_sized_text_encoder()
    pipe = Instant3DPipeline(model, encoder, device="cpu")
    setup = time.perf_counter() - start
    rss_setup = peak_rss_gib()
    times = stage_times(pipe, BENCH_PROMPTS[: args.prompts], args.frames)
    print(f"Paper-size model (the `official` preset, random weights), {cpu_name()}, "
          f"{torch.get_num_threads()} threads, {args.prompts} prompts\n")
    print("| stage | median | worst | median / the small default's budget |")
    print("| --- | --- | --- | --- |")
    print(f"| load: build the model + an SD 2.1-sized text encoder (random) | {setup:.1f} s | | |")
    for name, values in times.items():
        median, worst = statistics.median(values), max(values)
        budget = STAGE_BUDGETS.get(name)
        print(f"| {name} | {median:.2f} s | {worst:.2f} s | {median / budget:.2f} |" if budget else
              f"| {name} | {median:.2f} s | {worst:.2f} s | |")
    print(f"| peak memory (RSS) | {peak_rss_gib():.2f} GiB | | after loading: {rss_setup:.2f} GiB |")
    params = model.num_parameters() + sum(p.numel() for p in encoder.model.parameters())
    print(f"\nparameters: generator {model.num_parameters() / 1e6:.1f} M, with the text encoder {params / 1e6:.1f} M")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
