"""App benchmark: what a user waits for with the bundled default, on real prompts (bench/prompts.py).

    python -m bench.app [--repeats 1] [--snowman]

Each prompt goes through the app's service as a first request (nothing cached), at the app's settings (48-frame
256^2 lit orbit, GLB + OBJ zip at the default export settings, threshold auto). The table gives, per stage, the
median and the worst prompt, and each median's ratio to its budget. Then scrub views of each object (a new
azimuth, the object cached), and the same request again (cached). ``--snowman`` adds the earlier proxy row: a
triplane fitted to an analytic snowman, a crisper object than the generator makes.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.inference import cpu_name
from bench.prompts import BENCH_PROMPTS
from instant3d.pipeline import Instant3DPipeline
from instant3d_app.service import Instant3DService

BUDGETS = {"first view": 0.3, "video": 3.0, "export": 1.5, "ready": 4.0, "scrub view": 0.06, "cached": 0.2}


def timed_request(service: Instant3DService, prompt: str, seed: int) -> dict[str, float]:
    """Wall times from the request, as the app's progressive handler sees them: first view, video, all ready."""
    start = time.perf_counter()
    marks = {}
    for result in service.generate_progressively(prompt, seed, {"threshold": "auto"}):
        marks[result.stage] = time.perf_counter() - start
    return {"first view": marks["view"], "video": marks["video"] - marks["view"],
            "export": marks["done"] - marks["video"], "ready": marks["done"]}


def row(name: str, values: list[float], budget: float | None, unit: str = "s") -> str:
    scale = 1e3 if unit == "ms" else 1.0
    median, worst = statistics.median(values), max(values)
    ratio = f"{median / budget:.2f}" if budget else ""
    shown = f"{budget * scale:g} {unit}" if budget else ""
    fmt = (lambda v: f"{v * scale:.0f} ms") if unit == "ms" else (lambda v: f"{v:.2f} s")
    return f"| {name} | {fmt(median)} | {fmt(worst)} | {shown} | {ratio} |"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1, help="seeds per prompt")
    parser.add_argument("--snowman", action="store_true", help="add the fitted-snowman proxy row")
    args = parser.parse_args(argv)
    pipe = Instant3DPipeline.from_pretrained(device="cpu")
    stages: dict[str, list[float]] = {}
    scrub, cached = [], []
    with tempfile.TemporaryDirectory() as tmp:
        service = Instant3DService(pipe, Path(tmp))
        service.warm_up()
        for seed in range(args.repeats):
            for prompt in BENCH_PROMPTS:
                for name, seconds in timed_request(service, prompt, seed).items():
                    stages.setdefault(name, []).append(seconds)
                for azimuth in (30, 120, 210, 300):
                    start = time.perf_counter()
                    service.render_view(prompt, seed, azimuth, 15, shading="lit")
                    scrub.append(time.perf_counter() - start)
                start = time.perf_counter()
                service.generate(prompt, seed, {"threshold": "auto"}, shading="lit")
                cached.append(time.perf_counter() - start)
        snowman = None
        if args.snowman:
            from instant3d.testing.analytic import fit_triplane, snowman as snowman_scene

            model = pipe.model
            planes = fit_triplane(model.field, snowman_scene(), model.config.generator.triplane_resolution,
                                  steps=300)
            forward, model.forward = model.forward, (lambda tokens, pooled, z: planes)
            snowman = timed_request(service, "a fitted snowman", 0)
            model.forward = forward
    n = len(stages["ready"])
    print(f"\nMachine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}. The bundled "
          f"default ({pipe.source.name}) on {len(BENCH_PROMPTS)} prompts x {args.repeats} seed(s) = {n} first "
          "requests; times from the request.\n")
    print("| stage | median | worst | budget | median / budget |\n| --- | --- | --- | --- | --- |")
    print(row("first view (256^2, lit), from the request", stages["first view"], BUDGETS["first view"], "ms"))
    print(row("48-frame 256^2 orbit video, after it", stages["video"], BUDGETS["video"]))
    print(row("GLB + OBJ zip, after it", stages["export"], BUDGETS["export"]))
    print(row("**everything ready**", stages["ready"], BUDGETS["ready"]))
    print(row(f"scrub view (256^2, lit; {len(scrub)} views)", scrub, BUDGETS["scrub view"], "ms"))
    print(row("the same request again (cached)", cached, BUDGETS["cached"], "ms"))
    if snowman:
        print(f"| (proxy) fitted snowman, everything ready | {snowman['ready']:.2f} s | | | |")


if __name__ == "__main__":
    main()
