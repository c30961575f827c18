"""What the app does, without the widgets: generate, re-render a view, re-export; input checks and files.

``app.py`` only wires Gradio components to these methods and turns ``UserError`` into ``gr.Error``.
Every file the app serves is written here, into a private folder per request under ``output_root``; old
request folders are deleted so that disk use stays bounded. The app makes ``output_root`` Gradio's cache too, so
Gradio serves those files in place; the images it writes there itself (one folder named by a SHA-256 digest per
distinct image) are pruned to the newest ``4 * keep_requests``. Nothing else in the folder is ever touched.
"""

from __future__ import annotations

import itertools
import re
from collections import OrderedDict
import random
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from instant3d.export.mesh import ExportError, ExportOptions
from instant3d.pipeline import MAX_SEED, Instant3DOutput, Instant3DPipeline
from instant3d.render.shading import SHADINGS
from instant3d.models.text_encoder import PromptError, clean_prompt
from instant3d.export.video import write_mp4

GRADIO_CACHE_ENTRY = re.compile(r"[0-9a-f]{64}")  # how Gradio names a cached file's folder (its sha256)
MAX_PROMPT_CHARS = 500  # longer prompts are cut (visibly) before they reach the tokenizer


class UserError(ValueError):
    """A problem with what the user asked for; the message is shown to them as is."""


@dataclass
class GenerationResult:
    prompt: str
    seed: int
    video: Path | None  # None until the orbit is written (progressive results)
    glb: Path | None  # None until exported, or when the export failed (the note says why and what to change)
    obj_zip: Path | None
    preview: np.ndarray  # the front view, for the view panel
    timings: dict[str, float]  # seconds per stage
    notes: list[str] = field(default_factory=list)  # warnings for the user (truncation, clamped seed, ...)
    info: list[str] = field(default_factory=list)  # facts worth showing quietly (mesh size, chosen threshold)
    model: str = "default"  # which model made it
    stage: str = "done"  # progressive results: "view" (the first view only), "video" (and the orbit), "done"


def check_prompt(prompt) -> tuple[str, list[str]]:
    """(cleaned prompt, notes). Empty -> UserError; over MAX_PROMPT_CHARS -> cut, with a note."""
    notes = []
    if isinstance(prompt, str) and len(prompt) > MAX_PROMPT_CHARS:
        prompt = prompt[:MAX_PROMPT_CHARS]
        notes.append(f"The prompt was longer than {MAX_PROMPT_CHARS} characters and was cut.")
    try:
        text = clean_prompt(prompt)
    except PromptError as exc:
        raise UserError(f"Please type a prompt: {exc}") from exc
    return text, notes


def check_seed(seed) -> tuple[int, list[str]]:
    """(seed, notes). Missing -> 0; out of range -> clamped, with a note; not a number -> UserError."""
    if seed is None or seed == "":
        return 0, []
    try:
        value = float(seed)
    except (TypeError, ValueError):
        raise UserError(f"The seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}.") from None
    if not np.isfinite(value):
        raise UserError(f"The seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}.")
    clamped = int(min(max(round(value), 0), MAX_SEED))
    notes = [] if clamped == value else [f"The seed {seed} was changed to {clamped} (whole numbers 0 to {MAX_SEED})."]
    return clamped, notes


def check_lighting(shading) -> str:
    """The display lighting ("lit" when missing); anything else -> UserError."""
    if shading in (None, ""):
        return "lit"
    if shading not in SHADINGS:
        raise UserError(f"Lighting must be one of {', '.join(SHADINGS)}, got {shading!r}.")
    return shading


def random_seed() -> int:
    return random.randint(0, MAX_SEED)


def format_timings(timings: dict[str, float], notes: list[str] | None = None) -> str:
    """One line per stage, then the notes: plain text (never rendered as HTML)."""
    lines = [f"{name:<16} {1e3 * seconds:8.0f} ms" for name, seconds in timings.items()]
    lines.append(f"{'total':<16} {1e3 * sum(timings.values()):8.0f} ms")
    return "\n".join(lines + [f"Note: {n}" for n in notes or []])


class Instant3DService:
    """The models behind the app (a default pipeline, others loaded on first use), its outputs on disk, and the
    work of each app event."""

    def __init__(self, pipeline: Instant3DPipeline, output_root: Path, video_frames: int = 48, video_size: int = 256,
                 elevation: float = 15.0, keep_requests: int = 64, name: str = "default",
                 alternatives: dict[str, Path] | None = None):
        self.default_model = name
        self._pipelines = {name: pipeline}
        self._sources = {k: Path(v) for k, v in (alternatives or {}).items() if k != name}
        self._load_lock = threading.Lock()
        self.output_root = Path(output_root)
        self.output_root.mkdir(parents=True, exist_ok=True)
        self.video_frames, self.video_size, self.elevation = video_frames, video_size, elevation
        self.keep_requests = keep_requests
        self._counter = itertools.count()
        self._views = itertools.count(1)
        self._lock = threading.Lock()
        self._requests: list[Path] = []
        self._results: OrderedDict[tuple, GenerationResult] = OrderedDict()
        self._jobs: OrderedDict[str, dict] = OrderedDict()  # streamed requests the page advances stage by stage

    # -- models ---------------------------------------------------------------------------------------------
    @property
    def pipeline(self) -> Instant3DPipeline:
        return self._pipelines[self.default_model]

    def model_names(self) -> list[str]:
        return [self.default_model, *sorted(self._sources)]

    def pipeline_for(self, model: str | None = None) -> Instant3DPipeline:
        """The named model's pipeline, loaded (once) on first use, on the default pipeline's device."""
        model = model or self.default_model
        with self._load_lock:
            if model not in self._pipelines:
                if model not in self._sources:
                    raise UserError(f"Unknown model {model!r}; choose one of {', '.join(self.model_names())}.")
                self._pipelines[model] = Instant3DPipeline.from_pretrained(self._sources[model],
                                                                           device=self.pipeline.device)
        return self._pipelines[model]

    # -- files ---------------------------------------------------------------------------------------------
    def _request_folder(self) -> Path:
        """A fresh folder for one request's files; the oldest folders beyond ``keep_requests`` are deleted."""
        folder = self.output_root / f"{next(self._counter):06d}-{uuid.uuid4().hex[:8]}"
        folder.mkdir(parents=True)
        with self._lock:
            self._requests.append(folder)
            stale, self._requests = self._requests[: -self.keep_requests], self._requests[-self.keep_requests :]
        for old in stale:
            shutil.rmtree(old, ignore_errors=True)
        self.prune_gradio_cache()
        return folder

    def prune_gradio_cache(self) -> None:
        """Keep the newest ``4 * keep_requests`` of Gradio's own cache folders (the views it saved as PNG)."""
        try:
            entries = [p for p in self.output_root.iterdir() if GRADIO_CACHE_ENTRY.fullmatch(p.name) and p.is_dir()]
            entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        except OSError:
            return  # a folder deleted by a concurrent prune
        for old in entries[4 * self.keep_requests :]:
            shutil.rmtree(old, ignore_errors=True)

    def warm_up(self) -> None:
        """Pay the libraries' one-time start-up costs (xatlas, ffmpeg, the first bake) before the first user."""
        with tempfile.TemporaryDirectory() as tmp:
            out = self.pipeline("warm up", seed=0)
            out.orbit_video(Path(tmp) / "w.mp4", frames=2, size=64)
            try:
                out.export_files(glb=Path(tmp) / "w.glb", obj_zip=Path(tmp) / "w.zip", resolution=32,
                                 threshold="auto", texture_size=64, target_faces=100)
            except ExportError:
                pass  # an empty random object: the libraries are loaded all the same
        self.pipeline.cache.clear()

    # -- events --------------------------------------------------------------------------------------------
    def output_for(self, prompt: str, seed: int, model: str | None = None) -> Instant3DOutput:
        """The object for (prompt, seed): from the pipeline's cache, or regenerated (milliseconds)."""
        return self.pipeline_for(model)(prompt, seed=seed)

    def generate(self, prompt, seed, export_options: dict | None = None, progress=None,
                 model: str | None = None, shading: str | None = None, raw: bool = False) -> GenerationResult:
        """Prompt -> triplane -> orbit video + GLB + OBJ zip + a front view (``shading``: the display lighting of
        the video and view, "lit" or "albedo"; the mesh files always carry the plain albedo). The video and view
        show the object the GLB holds (haze and floaters removed); ``raw`` shows the field as generated."""
        result = None
        for result in self.generate_progressively(prompt, seed, export_options, progress, model, shading,
                                                  first_view=False, raw=raw):
            pass
        return result

    def generate_progressively(self, prompt, seed, export_options: dict | None = None, progress=None,
                               model: str | None = None, shading: str | None = None, first_view: bool = True,
                               raw: bool = False):
        """``generate``, yielding as each piece exists, so the user sees the object at once: first the front view
        (stage "view", as soon as the triplane exists), then the orbit video ("video"), then the mesh files
        ("done"). Input errors raise before anything is yielded; a cached result is yielded once, whole. With
        ``first_view=False`` the view stage is skipped and the orbit's first frame is the view (no extra render)."""
        report = progress or (lambda *a, **k: None)
        text, notes = check_prompt(prompt)
        seed, seed_notes = check_seed(seed)
        notes += seed_notes
        shading = check_lighting(shading)
        options = self._export_options(export_options)
        model = model or self.default_model
        pipeline = self.pipeline_for(model)
        raw = bool(raw)
        key = (model, text, seed, shading, raw, tuple(sorted(options.items())))
        cached = self._cached_result(key)
        if cached is not None:
            report(1.0, desc="done (cached)")
            yield cached
            return
        report(0.05, desc="text -> triplane")
        start = time.perf_counter()
        out = pipeline(text, seed=seed)
        timings = {"triplane": time.perf_counter() - start}
        notes += out.notes
        preview = None
        if first_view:
            start = time.perf_counter()
            preview = out.render(0.0, self.elevation, size=self.video_size, shading=shading,
                                 clean=not raw)  # = the orbit's frame 0
            timings["first view"] = time.perf_counter() - start
            yield GenerationResult(text, seed, None, None, None, preview, dict(timings), list(notes), [], model,
                                   stage="view")
        folder = self._request_folder()
        report(0.2, desc="orbit video")
        start = time.perf_counter()
        frames, video = self._write_orbit(out, folder, shading, raw)
        timings["video"] = time.perf_counter() - start
        preview = frames[0] if preview is None else preview
        result = GenerationResult(text, seed, video, None, None, preview, dict(timings), list(notes), [], model,
                                  stage="video")
        yield result
        report(0.55, desc="mesh export")
        try:
            glb, obj_zip, export_timings, info = self._export(out, folder, options)
            timings.update(export_timings)
        except UserError as exc:  # keep the video and views; say how to get a mesh
            glb = obj_zip = None
            info = []
            notes.append(f"{exc} Change it under 'Export settings' and press 'Re-export'.")
        report(1.0, desc="done")
        result = GenerationResult(text, seed, video, glb, obj_zip, preview, timings, notes, info, model)
        with self._lock:
            self._results[key] = result
            while len(self._results) > max(1, self.keep_requests // 2):
                self._results.popitem(last=False)
        yield result

    # -- streaming to the page, one event per stage ------------------------------------------------------------
    MAX_JOBS = 16  # unfinished streamed requests kept (a page that stops asking leaves one behind)

    def start_job(self, prompt, seed, export_options: dict | None = None, model: str | None = None,
                  shading: str | None = None, raw: bool = False) -> tuple[str, GenerationResult]:
        """The first stage of a streamed request: (job id, the front view). The page then calls ``advance_job``
        for the orbit video and for the files. Input errors raise here, before any job exists."""
        stream = self.generate_progressively(prompt, seed, export_options, None, model, shading, raw=raw)
        first = next(stream)
        job = uuid.uuid4().hex
        with self._lock:
            self._jobs[job] = {"stream": stream, "last": first, "lock": threading.Lock()}
            while len(self._jobs) > self.MAX_JOBS:  # dropped, not closed: another thread may be advancing it
                self._jobs.popitem(last=False)
        return job, first

    def advance_job(self, job: str) -> GenerationResult:
        """The job's next stage ("video", then "done"); a finished job keeps returning its whole result."""
        with self._lock:
            entry = self._jobs.get(job)
        if entry is None:
            raise UserError("This request is no longer running (the server restarted or it was replaced by newer "
                            "ones). Press Generate again.")
        with entry["lock"]:  # one stage at a time per job
            if entry["last"].stage != "done":
                entry["last"] = next(entry["stream"])
            return entry["last"]

    def _cached_result(self, key) -> GenerationResult | None:
        """A finished result for the same prompt, seed and export settings, if its files are still on disk."""
        with self._lock:
            result = self._results.get(key)
            if result is None:
                return None
            if not all(p is None or p.exists() for p in (result.video, result.glb, result.obj_zip)):
                del self._results[key]
                return None
            self._results.move_to_end(key)
        return GenerationResult(result.prompt, result.seed, result.video, result.glb, result.obj_zip,
                                result.preview, {"cached": 0.0}, list(result.notes), list(result.info), result.model)

    def render_view(self, prompt: str, seed: int, azimuth: float, elevation: float,
                    model: str | None = None, shading: str | None = None, raw: bool = False) -> np.ndarray:
        """One 256^2 preview of the current object (fast path: the grid baked at generation is reused)."""
        if not prompt:
            raise UserError("Generate an object first, then turn it with the sliders.")
        azimuth, elevation = float(azimuth), float(np.clip(float(elevation), -89.0, 89.0))
        if next(self._views) % 16 == 0:  # views add Gradio cache entries too, without any request folder
            self.prune_gradio_cache()
        return self.output_for(prompt, int(seed), model).render(azimuth, elevation, size=self.video_size,
                                                                shading=check_lighting(shading), clean=not raw)

    def orbit_video(self, prompt: str, seed: int, model: str | None = None, shading: str | None = None,
                    raw: bool = False) -> Path:
        """A new orbit video of the current object (when the user switches the lighting or the raw field), in a
        fresh folder."""
        if not prompt:
            raise UserError("Generate an object first; the lighting applies to the current object.")
        out = self.output_for(prompt, int(seed), model)
        return self._write_orbit(out, self._request_folder(), check_lighting(shading), bool(raw))[1]

    def reexport(self, prompt: str, seed: int, export_options: dict | None = None, model: str | None = None):
        """New GLB + OBJ zip of the current object with other settings, without regenerating it."""
        if not prompt:
            raise UserError("Generate an object first; export settings apply to the current object.")
        options = self._export_options(export_options)
        out = self.output_for(prompt, int(seed), model)
        return self._export(out, self._request_folder(), options)

    # -- helpers -------------------------------------------------------------------------------------------
    def _write_orbit(self, out: Instant3DOutput, folder: Path, shading: str,
                     raw: bool = False) -> tuple[list[np.ndarray], Path]:
        """The app's orbit of ``out`` (frames, and their MP4 in ``folder``)."""
        frames = out.orbit_frames(self.video_frames, self.video_size, self.elevation, shading=shading,
                                  clean=not raw)
        return frames, write_mp4(frames, folder / "orbit.mp4")

    @staticmethod
    def _export_options(options: dict | None) -> dict:
        options = dict(options or {})
        for key in ("resolution", "target_faces", "texture_size"):
            if key in options and options[key] is not None:
                options[key] = int(round(float(options[key])))
        if options.get("threshold") in (None, ""):
            options.pop("threshold", None)  # the library default
        elif options["threshold"] == 0:
            options["threshold"] = "auto"  # the app's "0 = auto"
        try:
            ExportOptions.from_kwargs(**options)
        except ExportError as exc:
            raise UserError(str(exc)) from exc
        return options

    @staticmethod
    def _export(out: Instant3DOutput, folder: Path, options: dict):
        notes = []
        try:
            result = out.export_files(glb=folder / "model.glb", obj_zip=folder / "model_obj.zip", **options)
        except ExportError as exc:
            raise UserError(f"Export failed: {exc}") from exc
        timings = {f"export {k}": v for k, v in result.timings.items()}
        if options.get("threshold") == "auto":
            notes.append(f"Export threshold 'auto' chose density {result.threshold:.3g}.")
        notes.append(f"Mesh: {result.faces} triangles, {result.vertices} vertices.")
        return result.paths["glb"], result.paths["obj_zip"], timings, notes
