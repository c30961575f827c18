"""Inference benchmark: prints Markdown tables against the budgets of docs/DESIGN.md §5.

    python -m bench.inference            # full run (a few minutes on 2 cores)
    python -m bench.inference --quick    # fewer repeats

First the product: the bundled default on the prompts of bench/prompts.py (median and worst prompt, and each
median's ratio to its budget). Then the engine's parts, measured on proxies that isolate them: the ``small``
preset with random weights for the generator's speed, and a triplane fitted to an analytic snowman for the
renderers (a crisp object; the default's own objects are in the first table).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from instant3d.render.cameras import orbit_cameras
from instant3d.config import preset_config
from instant3d.models.model import Instant3DModel
from instant3d.cache import ResultCache
from instant3d.pipeline import Instant3DOutput, seed_noise
from instant3d.render.preview import BakedVolume
from instant3d.testing.random_models import save_random_clip_text
from instant3d.render.renderer import render_views
from instant3d.render.shading import DISPLAY_AMBIENT, display_light
from instant3d.models.text_encoder import TextEncoder
from instant3d.export.video import write_mp4
from instant3d.testing.analytic import fit_triplane, snowman


def timed(fn, repeats: int, warmup: int = 1) -> tuple[float, object]:
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


STAGE_BUDGETS = {"prompt -> triplane": 0.03, "one 256^2 lit frame": 0.06, "48-frame 256^2 lit orbit video": 3.0,
                 "GLB (default export, threshold auto)": 1.5}


def stage_times(pipe, prompts, frames: int = 48) -> dict[str, list[float]]:
    """Seconds per stage and prompt, as the app runs them: prompt -> triplane (nothing cached), the preview bake
    (the cleaned object), one lit 256^2 frame, the lit orbit video, the GLB (threshold auto)."""
    pipe("warm up", seed=0)
    times: dict[str, list[float]] = {}

    def mark(name, start):
        times.setdefault(name, []).append(time.perf_counter() - start)

    with tempfile.TemporaryDirectory() as tmp:
        for prompt in prompts:
            pipe.cache.clear()
            start = time.perf_counter()
            out = pipe(prompt, seed=0)
            mark("prompt -> triplane", start)
            start = time.perf_counter()
            _ = out.baked  # the property bakes on first use
            mark("bake preview grid", start)
            start = time.perf_counter()
            out.render(30, 15, size=256, shading="lit")
            mark("one 256^2 lit frame", start)
            start = time.perf_counter()
            out.orbit_video(Path(tmp) / "orbit.mp4", frames=frames, size=256, shading="lit")
            mark(f"{frames}-frame 256^2 lit orbit video", start)
            start = time.perf_counter()
            out.export_glb(Path(tmp) / "model.glb", threshold="auto")
            mark("GLB (default export, threshold auto)", start)
    return times


def default_model_rows() -> list[tuple[str, str, str]]:
    """Per prompt, on the bundled default: prompt -> triplane (nothing cached), the preview bake, one lit 256^2
    frame, the 48-frame lit orbit video, the GLB. Median, worst and median / budget."""
    from bench.prompts import BENCH_PROMPTS
    from instant3d.pipeline import Instant3DPipeline

    pipe = Instant3DPipeline.from_pretrained(device="cpu")
    times = stage_times(pipe, BENCH_PROMPTS)
    budgets = STAGE_BUDGETS
    rows = []
    for name, values in times.items():
        median, worst, budget = statistics.median(values), max(values), budgets.get(name)
        fmt = (lambda v: f"{1e3 * v:.0f} ms") if median < 1 else (lambda v: f"{v:.2f} s")
        note = f"worst {fmt(worst)}" + (f"; budget {fmt(budget)}, median / budget {median / budget:.2f}"
                                         if budget else "")
        rows.append((f"**{name}** (default, {len(values)} prompts)", f"**{fmt(median)}**", note))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    reps = 3 if args.quick else 10
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 2)))
    rows: list[tuple[str, str, str]] = default_model_rows()

    for name in ("tiny", "small", "paper"):
        n = Instant3DModel(preset_config(name)).num_parameters()
        note = "the official code: ~270 M" if name == "paper" else ""
        rows.append((f"parameters, `{name}` preset", f"{n / 1e6:.2f} M", note))

    # prompt -> triplane, small preset, with a CLIP text tower of the toy world's size (128 wide, 4 layers, 32 tokens)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_random_clip_text(Path(tmp) / "clip", hidden=128, layers=4, heads=4, max_length=32)
        encoder = TextEncoder.from_folder(folder)
    torch.manual_seed(0)
    model = Instant3DModel(preset_config("small")).eval().requires_grad_(False)
    prompts = iter([f"a red cube number {i}" for i in range(10_000)])

    def uncached_text():
        return encoder.encode(next(prompts))

    t_text, (tokens, pooled) = timed(uncached_text, reps * 3)
    z = seed_noise(0, model.config.generator.z_dim)
    with torch.no_grad():
        t_gen, _ = timed(lambda: model(tokens, pooled, z), reps * 3)
    rows.append(("text encoder, new prompt (small CLIP)", f"{1e3 * t_text:.1f} ms", "cached prompts: ~0 ms"))
    rows.append(("generator, `small` preset", f"{1e3 * t_gen:.1f} ms", ""))
    rows.append(("**prompt -> triplane** (new prompt)", f"**{1e3 * (t_text + t_gen):.1f} ms**", "budget <= 30 ms"))

    # a real object for the renderers
    cfg = model.config
    field = model.field
    start = time.perf_counter()
    planes = fit_triplane(field, snowman(), cfg.generator.triplane_resolution, steps=300)
    fit_seconds = time.perf_counter() - start
    rows.append(("(proxy) fit a snowman triplane for the renders below", f"{fit_seconds:.1f} s", "setup only"))
    field.requires_grad_(False)
    render = cfg.render

    t_bake, volume = timed(lambda: BakedVolume.from_field(field, planes, render.preview_grid,
                                                          occupancy_threshold=render.preview_occupancy), reps)
    rows.append((f"bake preview grid ({render.preview_grid}^3)", f"{1e3 * t_bake:.0f} ms", "once per object"))

    azimuths = [15.0 * i for i in range(24)]
    frame_times = []
    for az in azimuths:
        cams = orbit_cameras(az, 15, render.camera_radius, render.fov_deg)
        frame_times.append(timed(lambda cams=cams: volume.render(cams, 256), 1)[0])
    t_frame = statistics.median(frame_times)
    rows.append(("**one 256^2 preview frame**", f"**{1e3 * t_frame:.0f} ms**",
                 f"budget <= 60 ms; max over 24 views {1e3 * max(frame_times):.0f} ms"))

    # lit (the app's default view): each pixel shaded once, normals from the baked density at its expected depth
    lit_times = []
    for az in azimuths:
        cams = orbit_cameras(az, 15, render.camera_radius, render.fov_deg)
        lit_times.append(timed(lambda cams=cams: volume.render(cams, 256, light_dirs=display_light(cams.position)),
                               1)[0])
    t_lit = statistics.median(lit_times)
    rows.append(("**one 256^2 preview frame, lit**", f"**{1e3 * t_lit:.0f} ms**",
                 f"budget <= 60 ms; {t_lit / t_frame:.2f}x unlit; max over 24 views {1e3 * max(lit_times):.0f} ms"))

    psnrs, lit_psnrs, t_full = [], [], []
    for az, el in [(0, 15), (120, 30), (240, -10)]:
        cams = orbit_cameras(az, el, render.camera_radius, render.fov_deg)
        t, full = timed(lambda cams=cams: render_views(field, planes, cams, 256, num_samples=render.num_samples,
                                             num_importance=render.num_importance).color, 1, warmup=0)
        t_full.append(t)
        fast = volume.render(cams, 256)
        psnrs.append(-10 * math.log10(((fast - full) ** 2).mean().item()))
        light = display_light(cams.position)
        full_lit = render_views(field, planes, cams, 256, num_samples=render.num_samples,
                                num_importance=render.num_importance, shading="lambertian", light_dirs=light,
                                ambient=DISPLAY_AMBIENT).color
        fast_lit = volume.render(cams, 256, light_dirs=light)
        lit_psnrs.append(-10 * math.log10(((fast_lit - full_lit) ** 2).mean().item()))
    rows.append(("full render 256^2 (64 + 64 samples)", f"{statistics.median(t_full):.2f} s",
                 f"reference quality; {statistics.median(t_full) / t_frame:.0f}x a preview frame"))
    rows.append(("**PSNR fast vs full**", f"**{min(psnrs):.1f} dB**", "worst of 3 views; budget >= 30 dB"))
    rows.append(("PSNR fast vs full, lit", f"{min(lit_psnrs):.1f} dB",
                 "worst of 3 views; deferred shading, grid normals vs per-sample field normals"))

    # the 48-frame orbit video, as the pipeline makes it (bake + frames + H.264 encode)
    text = "a snowman"
    with tempfile.TemporaryDirectory() as tmp:
        def video():
            out = Instant3DOutput(text, 0, planes, model, [], {}, ResultCache())
            return out.orbit_video(Path(tmp) / "orbit.mp4", frames=48, size=256)

        def lit_video():
            out = Instant3DOutput(text, 0, planes, model, [], {}, ResultCache())
            return out.orbit_video(Path(tmp) / "orbit.mp4", frames=48, size=256, shading="lit")

        t_video, _ = timed(video, max(2, reps // 3))
        t_lit_video, _ = timed(lit_video, max(2, reps // 3))
    rows.append(("**48-frame 256^2 orbit video, encoded**", f"**{t_video:.2f} s**", "budget <= 3 s; includes the bake"))
    rows.append(("**the same, lit** (the app's default)", f"**{t_lit_video:.2f} s**",
                 "budget <= 3 s; includes the bake"))

    frames = [volume.render(orbit_cameras(a, 15), 256)[0].mul(255).byte().numpy() for a in azimuths[:1]] * 48
    with tempfile.TemporaryDirectory() as tmp:
        t_enc, _ = timed(lambda: write_mp4(frames, Path(tmp) / "x.mp4"), 3)
    rows.append(("H.264 encode only (48 frames)", f"{1e3 * t_enc:.0f} ms", ""))

    print(f"\nMachine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}; medians.\n")
    print("| what | median | note |\n| --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
