"""The instant3d web app: type a prompt, watch and scrub the orbit, turn the object, download the GLB.

    python app.py [--checkpoint PATH] [--host 127.0.0.1] [--port 7860] [--share] [--device cpu|cuda]
                  [--output-dir DIR] [--auth USER:PASSWORD | --auth-file FILE] [--queue-size 64]

Widgets and event wiring only: the work lives in ``instant3d_app.service``. Binds 127.0.0.1 and makes no share
link unless asked (and warns when exposed without a password); analytics and hub telemetry are off before Gradio
is imported. Gradio serves the files it is handed from its cache folder: the app makes that folder its own output
folder, so files are served where they were written (never copied) and the service's clean-up bounds them all.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import ipaddress  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402

from instant3d.export.mesh import MAX_RESOLUTION, ExportOptions  # noqa: E402
from instant3d.pipeline import MAX_FRAMES, MAX_SEED, Instant3DPipeline  # noqa: E402
from instant3d.registry import ASSETS, bundled_checkpoints  # noqa: E402
from instant3d_app.service import Instant3DService, UserError, format_timings, random_seed  # noqa: E402
from instant3d.render.shading import SHADINGS  # noqa: E402

log = logging.getLogger("instant3d.app")
EXAMPLES_FILE = ASSETS / "examples.txt"
DEFAULT_EXPORT = {
    "resolution": ExportOptions.resolution,
    "threshold": "auto",  # checkpoints differ in density scale; the timings box says which density auto chose
    "target_faces": ExportOptions.target_faces,
    "texture_size": ExportOptions.texture_size,
}


def load_examples() -> list[list[str]]:
    if not EXAMPLES_FILE.is_file():
        return []
    return [[line.strip()] for line in EXAMPLES_FILE.read_text().splitlines() if line.strip()]


@contextlib.contextmanager
def gradio_cache_in(folder: Path):
    """Components created inside take ``folder`` as their Gradio cache (GRADIO_TEMP_DIR, read when a component
    is made): files already under it are served in place instead of being copied into an unbounded cache."""
    previous = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(Path(folder).resolve())
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = previous


def friendly_errors(action: str):
    """UserError as is; anything unexpected as a message saying what failed and what to try, with the traceback
    in the server log only (never in the page)."""

    def wrap(handler):
        def report(exc):
            if isinstance(exc, UserError):
                return gr.Error(str(exc))
            log.exception("%s failed", action)
            return gr.Error(f"Sorry, {action} failed on the server ({type(exc).__name__}). Try again; if it "
                            "fails again, try another prompt or seed. The details are in the server's log.")

        @functools.wraps(handler)
        def function(*args, **kwargs):
            try:
                return handler(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:  # noqa: BLE001
                raise report(exc) from None
        return function

    return wrap


def build_app(service: Instant3DService, model_concurrency: int = 1, export_defaults: dict | None = None) -> gr.Blocks:
    """The Blocks UI around one service. ``model_concurrency`` caps generate/export jobs running at once;
    ``export_defaults`` overrides the export settings the page starts with."""
    defaults = {**DEFAULT_EXPORT, **(export_defaults or {})}

    def page_result(result, with_files: bool = True):
        """The outputs list for a (partial) result; outputs not ready yet are skipped (left as they are)."""
        current = {"prompt": result.prompt, "seed": result.seed, "model": result.model}
        timings = format_timings(result.timings, result.notes + result.info)
        video = str(result.video) if result.video else gr.skip()
        if not with_files or result.stage != "done":
            return video, gr.skip(), gr.skip(), gr.skip(), timings, result.preview, current, 0, service.elevation
        for note in result.notes:
            gr.Warning(note)
        glb = str(result.glb) if result.glb else None
        obj_zip = str(result.obj_zip) if result.obj_zip else None
        return video, glb, glb, obj_zip, timings, result.preview, current, 0, service.elevation

    @friendly_errors("generating the object")
    def generate(prompt, seed, settings, model, shading, raw=False, progress=gr.Progress()):
        """The whole object in one call (the API's "generate", for scripts)."""
        try:
            result = service.generate(prompt, seed, settings, progress=progress, model=model, shading=shading,
                                      raw=raw)
        except UserError as exc:
            raise gr.Error(str(exc)) from None
        return page_result(result)

    # The page streams a request as three chained events, each returning once: the front view as soon as the
    # triplane exists, then the orbit video, then the 3D view and the downloads. (A streaming generator handler
    # left the 3D view's canvas unmounted in Chromium, whatever the early yields held; chained events do not.)
    @friendly_errors("generating the object")
    def start(prompt, seed, settings, model, shading, raw=False):
        try:
            job, result = service.start_job(prompt, seed, settings, model=model, shading=shading, raw=raw)
        except UserError as exc:
            raise gr.Error(str(exc)) from None
        return (job, *page_result(result, with_files=False))

    @friendly_errors("finishing the object")
    def next_stage(job, with_files: bool):
        if not job:  # the first stage failed: nothing to continue
            return (gr.skip(),) * 9
        try:
            return page_result(service.advance_job(job), with_files)
        except UserError as exc:
            raise gr.Error(str(exc)) from None

    @friendly_errors("rendering the view")
    def render_view(azimuth, elevation, current, shading, raw=False):
        try:
            return service.render_view(current.get("prompt", ""), current.get("seed", 0), azimuth, elevation,
                                       current.get("model"), shading, raw)
        except UserError as exc:
            raise gr.Error(str(exc)) from None

    @friendly_errors("re-lighting the object")
    def relight(shading, azimuth, elevation, current, raw=False):
        """The lighting or the raw-field switch changed: the same object's orbit and view, shown the new way
        (nothing before a first object)."""
        if not current.get("prompt"):
            return gr.skip(), gr.skip()
        try:
            video = service.orbit_video(current["prompt"], current.get("seed", 0), current.get("model"), shading,
                                        raw)
            view = service.render_view(current["prompt"], current.get("seed", 0), azimuth, elevation,
                                       current.get("model"), shading, raw)
        except UserError as exc:
            raise gr.Error(str(exc)) from None
        return str(video), view

    @friendly_errors("exporting the mesh")
    def reexport(current, settings, progress=gr.Progress()):
        progress(0.1, desc="mesh export")
        try:
            glb, obj_zip, timings, notes = service.reexport(current.get("prompt", ""), current.get("seed", 0), settings,
                                                            current.get("model"))
        except UserError as exc:
            raise gr.Error(str(exc)) from None
        return str(glb), str(glb), str(obj_zip), format_timings(timings, notes)

    def update_settings(resolution, threshold, target_faces, texture_size):
        return {"resolution": resolution, "threshold": "auto" if not threshold else threshold,
                "target_faces": target_faces, "texture_size": int(texture_size)}

    with gradio_cache_in(service.output_root), gr.Blocks(title="instant3d") as app:
        current = gr.State({"prompt": "", "seed": 0})
        settings = gr.State(dict(defaults))
        chosen_model = gr.State(service.default_model)
        chosen_lighting = gr.State("lit")
        chosen_raw = gr.State(False)
        job = gr.State("")
        gr.Markdown("## instant3d: text to 3D in one forward pass\nType a prompt and press **Generate**. "
                    "Drag the sliders to turn the object; download the GLB or the OBJ zip.")
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt", placeholder="a red cube on top of a blue sphere", lines=2,
                                    elem_id="prompt")
                with gr.Row():
                    seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, maximum=MAX_SEED)
                    dice = gr.Button("Random seed", size="sm")
                models = service.model_names()
                model = gr.Dropdown(models, value=service.default_model, label="Model", visible=len(models) > 1,
                                    elem_id="model")
                lighting = gr.Radio(list(SHADINGS), value="lit", label="Lighting", elem_id="lighting",
                                    info="lit: a light above the camera shows the shape; albedo: the colours, flat")
                raw_field = gr.Checkbox(False, label="Show the raw field", elem_id="raw_field",
                                        info="the field as generated, with the haze and floaters the GLB leaves out")
                run = gr.Button("Generate", variant="primary", elem_id="generate")
                gr.Examples(load_examples(), inputs=[prompt], cache_examples=False, label="Examples")
                with gr.Accordion("Export settings", open=False):
                    resolution = gr.Slider(32, MAX_RESOLUTION, value=defaults["resolution"], step=16,
                                           label="Grid resolution")
                    threshold = gr.Number(value=0 if defaults["threshold"] == "auto" else defaults["threshold"],
                                          label="Density threshold (0 = auto)", minimum=0)
                    target_faces = gr.Slider(500, 50000, value=defaults["target_faces"], step=500,
                                             label="Target faces")
                    texture_size = gr.Dropdown(["128", "256", "512", "1024", "2048"],
                                               value=str(defaults["texture_size"]), label="Texture size")
                    again = gr.Button("Re-export with these settings")
                timings = gr.Textbox(label="Timings and notes", lines=10, interactive=False, elem_id="timings")
            with gr.Column(scale=2):
                video = gr.Video(label="Orbit", autoplay=True, loop=True, format="mp4", elem_id="orbit")
                with gr.Row():
                    view = gr.Image(label="View", type="numpy", interactive=False, height=256, elem_id="view")
                    with gr.Column():
                        azimuth = gr.Slider(-180, 180, value=0, step=1, label="Azimuth", elem_id="azimuth")
                        elevation = gr.Slider(-60, 85, value=service.elevation, step=1, label="Elevation",
                                              elem_id="elevation")
                model3d = gr.Model3D(label="3D view", clear_color=(0.92, 0.92, 0.92, 1.0), elem_id="model3d")
                with gr.Row():
                    glb_file = gr.File(label="GLB", elem_id="glb_file")
                    obj_file = gr.File(label="OBJ + MTL + PNG (zip)", elem_id="obj_file")

        export_inputs = [resolution, threshold, target_faces, texture_size]
        for widget in export_inputs:
            widget.change(update_settings, export_inputs, settings, api_visibility="private", queue=False)
        model.change(lambda name: name, model, chosen_model, api_visibility="private", queue=False)
        dice.click(random_seed, None, seed, api_visibility="private", queue=False)
        outputs = [video, model3d, glb_file, obj_file, timings, view, current, azimuth, elevation]
        model_queue = dict(concurrency_id="model", concurrency_limit=model_concurrency)
        generate_inputs = [prompt, seed, settings, chosen_model, chosen_lighting, chosen_raw]
        # The first stage (~0.25 s of work) skips the queue, which costs ~0.2 s of round trips before the first view;
        # the service is thread-safe, and the video and files stages stay queued under the model's concurrency cap.
        for trigger in (run.click, prompt.submit):
            trigger(start, generate_inputs, [job, *outputs], api_visibility="private", queue=False,
                    show_progress="minimal").success(
                lambda j: next_stage(j, False), job, outputs, api_visibility="private", **model_queue).success(
                lambda j: next_stage(j, True), job, outputs, api_visibility="private", **model_queue)
        whole = gr.Button(visible=False)  # the API's one-call "generate" (scripts, gradio_client)
        whole.click(generate, generate_inputs, outputs, api_name="generate", **model_queue)
        view_queue = dict(show_progress="hidden", trigger_mode="always_last", concurrency_id="view",
                          concurrency_limit=2)
        view_inputs = [azimuth, elevation, current, chosen_lighting, chosen_raw]
        azimuth.input(render_view, view_inputs, view, api_name="render_view", **view_queue)
        elevation.input(render_view, view_inputs, view, api_visibility="private", **view_queue)
        redraw_inputs = [chosen_lighting, azimuth, elevation, current, chosen_raw]
        lighting.change(lambda name: name, lighting, chosen_lighting, api_visibility="private", queue=False).then(
            relight, redraw_inputs, [video, view], api_visibility="private", **model_queue)
        raw_field.change(bool, raw_field, chosen_raw, api_visibility="private", queue=False).then(
            relight, redraw_inputs, [video, view], api_visibility="private", **model_queue)
        again.click(reexport, [current, settings], [model3d, glb_file, obj_file, timings], api_name="reexport",
                    **model_queue)
    return app


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="instant3d web app")
    parser.add_argument("--checkpoint", type=Path, default=None, help="checkpoint folder (default: the bundled one)")
    parser.add_argument("--random-weights", action="store_true",
                        help="run on a random small model (no checkpoint needed; the objects are noise)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also make a public gradio.live link (off by default)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--output-dir", type=Path, default=None, help="where generated files go (default: a temp dir)")
    parser.add_argument("--concurrency", type=int, default=1, help="model jobs at once (default 1 on 2 CPU cores)")
    parser.add_argument("--queue-size", type=int, default=64,
                        help="requests waiting at most; beyond it a user is told the app is busy (default 64)")
    parser.add_argument("--video-frames", type=int, default=48,
                        help="frames of the orbit video (default 48; fewer keep a paper-size model quick on a CPU)")
    parser.add_argument("--video-size", type=int, default=256, help="orbit video and view size in pixels")
    login = parser.add_mutually_exclusive_group()
    login.add_argument("--auth", default=None, metavar="USER:PASSWORD", help="ask for this user name and password")
    login.add_argument("--auth-file", type=Path, default=None,
                       help="a file of USER:PASSWORD lines (keeps the password out of the shell history)")
    args = parser.parse_args(argv)
    try:
        args.credentials = read_credentials(args.auth, args.auth_file)
    except ValueError as exc:
        parser.error(str(exc))
    if args.queue_size < 1 or args.concurrency < 1:
        parser.error("--queue-size and --concurrency must be at least 1")
    if not 2 <= args.video_frames <= MAX_FRAMES or not 64 <= args.video_size <= 1024:
        parser.error(f"--video-frames must be from 2 to {MAX_FRAMES} and --video-size from 64 to 1024")
    return args


def read_credentials(auth: str | None, auth_file: Path | None) -> list[tuple[str, str]]:
    """[(user, password)] from --auth or --auth-file; a clear error for a malformed one."""
    if auth_file is not None:
        if not auth_file.is_file():
            raise ValueError(f"--auth-file {auth_file} does not exist")
        lines = [line.strip() for line in auth_file.read_text(encoding="utf-8").splitlines()]
        entries = [line for line in lines if line and not line.startswith("#")]
        if not entries:
            raise ValueError(f"--auth-file {auth_file} holds no USER:PASSWORD line")
    else:
        entries = [auth] if auth is not None else []
    credentials = []
    for entry in entries:
        user, sep, password = entry.partition(":")
        if not sep or not user or not password:
            raise ValueError("credentials must look like USER:PASSWORD, both non-empty")
        credentials.append((user, password))
    return credentials


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, share: bool, has_auth: bool) -> str | None:
    """What to print when the app is reachable from other machines without a password."""
    if has_auth or (is_loopback(host) and not share):
        return None
    where = "a public gradio.live link" if share else f"{host} (other machines can reach it)"
    return (f"WARNING: the app is served on {where} with no password: anyone who reaches it can use this machine. "
            "Add --auth USER:PASSWORD or --auth-file FILE, or bind 127.0.0.1.")


def make_service(args) -> Instant3DService:
    """The default model (--checkpoint, the bundled default, or random weights) plus every bundled checkpoint."""
    if args.random_weights:
        from instant3d.testing.random_models import random_small_pipeline

        pipeline, name = random_small_pipeline(args.device or "cpu"), "random-weights"
    else:
        pipeline = Instant3DPipeline.from_pretrained(args.checkpoint, device=args.device)
        name = pipeline.source.name
    # the app's own subfolder: it is served and pruned, so nothing else in --output-dir is ever exposed or touched
    output = (args.output_dir.resolve() / "instant3d-app") if args.output_dir else Path(
        tempfile.mkdtemp(prefix="instant3d-app-"))
    return Instant3DService(pipeline, output, video_frames=args.video_frames, video_size=args.video_size, name=name,
                            alternatives=bundled_checkpoints())


def launch(app: gr.Blocks, service: Instant3DService, queue_size: int = 64, **options):
    """Queue and launch ``app``, allowing Gradio to serve the service's output folder (and nothing else of
    ours): Gradio serves its upload folder and ``allowed_paths`` only."""
    return app.queue(max_size=queue_size).launch(allowed_paths=[str(service.output_root.resolve())], **options)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    warning = exposure_warning(args.host, args.share, bool(args.credentials))
    if warning:
        print(warning, file=sys.stderr)
    service = make_service(args)
    service.warm_up()
    app = build_app(service, model_concurrency=args.concurrency)
    launch(app, service, args.queue_size, server_name=args.host, server_port=args.port, share=args.share,
           auth=args.credentials or None)


if __name__ == "__main__":
    main()
