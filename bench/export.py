"""Export benchmark: per-stage medians of GLB export at default settings, on a triplane holding a real object.

    python -m bench.export [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from bench.inference import cpu_name
from instant3d.config import preset_config
from instant3d.export.mesh import ExportOptions
from instant3d.models.model import Instant3DModel
from instant3d.pipeline import Instant3DOutput
from instant3d.testing.analytic import fit_triplane, snowman

STAGES = ["grid", "marching_cubes", "cleanup", "decimate", "uv", "bake", "write"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = Instant3DModel(preset_config("small"))
    planes = fit_triplane(model.field, snowman(), model.config.generator.triplane_resolution, steps=300)
    model.requires_grad_(False)
    out = Instant3DOutput("a snowman", 0, planes, model, [], {}, None)
    defaults = ExportOptions()
    runs = {"glb": [], "glb, vertex colours": [], "obj zip": []}
    with tempfile.TemporaryDirectory() as tmp:
        out.export_glb(Path(tmp) / "warmup.glb")  # first call pays one-time library start-up
        for _ in range(args.repeats):
            runs["glb"].append(out.export_glb(Path(tmp) / "a.glb"))
            runs["glb, vertex colours"].append(out.export_glb(Path(tmp) / "b.glb", vertex_colors=True))
            runs["obj zip"].append(out.export_obj_zip(Path(tmp) / "c.zip"))
    glb = runs["glb"]
    print(f"\nMachine: {cpu_name()}, {torch.get_num_threads()} threads; medians of {args.repeats} runs. Defaults: "
          f"grid {defaults.resolution}^3, threshold {defaults.threshold}, {defaults.target_faces} faces, "
          f"{defaults.texture_size}^2 texture; {glb[0].vertices} vertices.\n")
    print("| stage | median |\n| --- | --- |")
    for stage in STAGES:
        print(f"| {stage} | {1e3 * statistics.median(r.timings[stage] for r in glb):.0f} ms |")
    for name, results in runs.items():
        total = statistics.median(r.total_seconds for r in results)
        bold = "**" if name == "glb" else ""
        budget = " (budget <= 1.5 s)" if name == "glb" else ""
        print(f"| {bold}total, {name}{bold} | {bold}{total:.2f} s{bold}{budget} |")


if __name__ == "__main__":
    main()
