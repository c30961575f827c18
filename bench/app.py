"""App benchmark: what a user waits for, prompt -> orbit video + GLB + OBJ zip ready, first time and cached.

    python -m bench.app [--repeats N]

The generator's output is replaced by a triplane fitted to an analytic snowman, so the video and the export
run on a real object (random weights give fog, which is slower to march and not what users see).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.inference import cpu_name
from instant3d.testing.random_models import random_small_pipeline
from instant3d_app.service import Instant3DService
from instant3d.testing.analytic import fit_triplane, snowman


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    pipe = random_small_pipeline("cpu")
    model = pipe.model
    planes = fit_triplane(model.field, snowman(), model.config.generator.triplane_resolution, steps=300)
    model.requires_grad_(False)
    model.forward = lambda tokens, pooled, z: planes  # every prompt gets the snowman
    with tempfile.TemporaryDirectory() as tmp:
        service = Instant3DService(pipe, Path(tmp))
        service.warm_up()
        first, cached, stages = [], [], {}
        for i in range(args.repeats):
            result = service.generate(f"a snowman number {i}", i, {"threshold": "auto"})  # as the app does
            first.append(sum(result.timings.values()))
            for k, v in result.timings.items():
                stages.setdefault(k, []).append(v)
            again = service.generate(f"a snowman number {i}", i, {"threshold": "auto"})
            cached.append(sum(again.timings.values()))
        views = []
        for az in range(0, 360, 30):
            start = time.perf_counter()
            service.render_view("a snowman number 0", 0, az, 15)
            views.append(time.perf_counter() - start)
    print(f"\nMachine: {cpu_name()}, {torch.get_num_threads()} threads; medians of {args.repeats} prompts; "
          "48-frame 256^2 video + GLB + OBJ zip at default export settings (threshold auto).\n")
    print("| what | median | budget |\n| --- | --- | --- |")
    for k, v in stages.items():
        print(f"| {k} | {1e3 * statistics.median(v):.0f} ms | |")
    print(f"| **prompt -> video + GLB ready, first time** | **{statistics.median(first):.2f} s** | <= 5 s |")
    print(f"| **same prompt again (cached)** | **{1e3 * statistics.median(cached):.0f} ms** | <= 0.2 s |")
    print(f"| one scrub view (256^2) | {1e3 * statistics.median(views):.0f} ms | <= 60 ms |")


if __name__ == "__main__":
    main()
