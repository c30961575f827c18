"""The public API: ``Instant3DPipeline.from_pretrained(path)(prompt, seed)`` -> ``Instant3DOutput``."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import torch

from instant3d.cache import ResultCache
from instant3d.render.cameras import orbit_cameras
from instant3d.io.checkpoint import CheckpointError, load_model, text_encoder_folder
from instant3d.config import Instant3DConfig
from instant3d.export.mesh import ExportResult, export_files
from instant3d.models.model import Instant3DModel
from instant3d.render.cleanup import CleanedField
from instant3d.render.preview import BakedVolume
from instant3d.render.color import to_uint8_display
from instant3d.render.renderer import render_views
from instant3d.render.shading import DISPLAY_AMBIENT, check_shading, display_light
from instant3d.models.text_encoder import TextEncoder, clean_prompt
from instant3d.export.video import write_mp4
from instant3d.registry import default_checkpoint
from instant3d.vocabulary import load_vocabulary, unknown_words_note

MAX_SEED = 2**32 - 1
MAX_RENDER_SIZE = 1024
MAX_FRAMES = 720
ORBIT_BATCH = 8  # preview frames rendered together (measured: 1.55 s for a 48-frame lit orbit against 1.95 one by one)


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        if isinstance(seed, float) and seed.is_integer():
            seed = int(seed)
        else:
            raise ValueError(f"the seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}")
    if not 0 <= int(seed) <= MAX_SEED:
        raise ValueError(f"the seed must be from 0 to {MAX_SEED}, got {seed}")
    return int(seed)


def seed_noise(seed: int, z_dim: int) -> torch.Tensor:
    """The style noise z for a seed: drawn on the CPU so that every device gets the same z."""
    return torch.randn(1, z_dim, generator=torch.Generator().manual_seed(seed))


class MissingTextEncoderError(CheckpointError):
    """A prompt was given to a model loaded without a text encoder."""


class Instant3DOutput:
    """One generated object: its triplane, and views, videos and field queries of it."""

    def __init__(self, prompt, seed, triplane, model: Instant3DModel, notes, timings, cache: ResultCache | None):
        self.prompt, self.seed = prompt, seed
        self.triplane = triplane  # (1, 3, C, R, R)
        self.field = model.field
        self.render_config = model.config.render
        self.notes = notes  # messages for the user (e.g. the prompt was truncated)
        self.timings = timings  # seconds per stage
        self._baked: dict[bool, BakedVolume] = {}  # clean -> grid
        self._lock = threading.Lock()
        self._cache = cache

    # -- field queries -------------------------------------------------------------------------------
    @torch.no_grad()
    def query(self, points, chunk: int = 2**18):
        """(density (N,), albedo (N, 3)) at world points (N, 3), on the pipeline's device."""
        points = torch.as_tensor(points, dtype=torch.float32, device=self.triplane.device)
        if points.dim() != 2 or points.shape[-1] != 3:
            raise ValueError(f"points must have shape (N, 3), got {tuple(points.shape)}")
        parts = [self.field(self.triplane, points[None, i : i + chunk]) for i in range(0, points.shape[0], chunk)]
        if not parts:
            return points.new_zeros(0), points.new_zeros(0, 3)
        return torch.cat([p[0][0] for p in parts]), torch.cat([p[1][0] for p in parts])

    @property
    def bound(self) -> float:
        return self.field.cfg.bound

    @property
    def albedo_space(self) -> str:
        """"linear" (our models) or "display" (a converted official model): how renders and exports show albedo."""
        return self.field.cfg.albedo_space

    def density_grid(self, resolution: int) -> torch.Tensor:
        """Density at the cell centres of a resolution^3 grid over the box, (z, y, x): exact, via the bake."""
        return self.field.bake(self.triplane, resolution)[0]

    def export_glb(self, path, **options) -> ExportResult:
        """A textured GLB of the object (see ``instant3d.export.mesh.ExportOptions`` for the options)."""
        return export_files(self, glb=path, **options)

    def export_obj_zip(self, path, **options) -> ExportResult:
        """model.obj + model.mtl + texture PNG in a zip, with the same geometry and texture as the GLB."""
        return export_files(self, obj_zip=path, **options)

    def export_files(self, glb=None, obj_zip=None, **options) -> ExportResult:
        """Both formats from one mesh build (what the app does)."""
        return export_files(self, glb=glb, obj_zip=obj_zip, **options)

    def density(self, points) -> torch.Tensor:
        return self.query(points)[0]

    def albedo(self, points) -> torch.Tensor:
        return self.query(points)[1]

    # -- views -----------------------------------------------------------------------------------------
    @property
    def baked(self) -> BakedVolume:
        """The fast-preview grid of the cleaned object (what the GLB holds), baked on first use."""
        return self.baked_volume(clean=True)

    def baked_volume(self, clean: bool = True) -> BakedVolume:
        """The fast-preview grid, baked on first use (thread-safe) and reused by every view. ``clean``: haze and
        floaters removed as the export removes them (``instant3d.render.cleanup``); otherwise the raw field."""
        with self._lock:
            if clean not in self._baked:
                start = time.perf_counter()
                cfg = self.render_config
                self._baked[clean] = BakedVolume.from_field(
                    self.field, self.triplane, cfg.preview_grid, occupancy_threshold=cfg.preview_occupancy,
                    clean=clean,
                )
                self.timings["bake" if clean else "bake (raw)"] = time.perf_counter() - start
            baked = self._baked[clean]
        if self._cache is not None:
            self._cache.trim()  # this result may just have grown by a baked grid
        return baked

    def _cameras(self, azimuth, elevation):
        el = torch.as_tensor(elevation, dtype=torch.float32)
        if not bool(torch.all(el.abs() <= 90)):
            raise ValueError(f"elevation must be between -90 and 90 degrees, got {elevation}")
        cfg = self.render_config
        return orbit_cameras(azimuth, elevation, cfg.camera_radius, cfg.fov_deg, device=self.triplane.device)

    @staticmethod
    def _check_size(size: int) -> int:
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 16 <= size <= MAX_RENDER_SIZE:
            raise ValueError(f"size must be a whole number of pixels from 16 to {MAX_RENDER_SIZE}, got {size!r}")
        return int(size)

    def render(self, azimuth: float = 0.0, elevation: float = 15.0, size: int = 256, quality: str = "fast",
               background=None, shading: str = "albedo", clean: bool = True) -> np.ndarray:
        """One view as a display-ready (H, W, 3) uint8 sRGB array (the field's albedo is linear).

        ``quality``: "fast" (baked preview) or "full" (reference renderer). ``background`` is linear RGB.
        ``shading``: "albedo" (the generated colours, flat) or "lit" (a light above the camera shows the shape).
        ``clean``: show the object the GLB holds (haze and floaters removed); False shows the raw field.
        """
        return self.render_many([azimuth], [elevation], size, quality, background, shading, clean)[0]

    def render_many(self, azimuths, elevations, size=256, quality="fast", background=None,
                    shading="albedo", clean: bool = True) -> list[np.ndarray]:
        size = self._check_size(size)
        lit = check_shading(shading) == "lit"
        cameras = self._cameras(azimuths, elevations)
        bg = self.render_config.background if background is None else background
        lights = display_light(cameras.position) if lit else None
        if quality == "fast":
            images = self.baked_volume(clean).render(cameras, size, background=bg,
                                                     step=self.render_config.preview_step, light_dirs=lights)
        elif quality == "full":
            cfg = self.render_config
            keep = self.baked_volume(True).keep if clean else None
            field = self.field if keep is None else CleanedField(self.field, keep)
            images = render_views(
                field, self.triplane, cameras, size, background=bg,
                num_samples=cfg.num_samples, num_importance=cfg.num_importance,
                shading="lambertian" if lit else "albedo", light_dirs=lights, ambient=DISPLAY_AMBIENT,
            ).color
        else:
            raise ValueError(f"quality must be 'fast' or 'full', got {quality!r}")
        return [to_uint8_display(img, self.field.cfg.albedo_space) for img in images]

    def orbit_frames(self, frames: int = 48, size: int = 256, elevation: float = 15.0, quality="fast",
                     shading: str = "albedo", clean: bool = True):
        """``frames`` views evenly spaced over a full turn, starting at the front (azimuth 0)."""
        if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or not 1 <= frames <= MAX_FRAMES:
            raise ValueError(f"frames must be a whole number from 1 to {MAX_FRAMES}, got {frames!r}")
        azimuths = [360.0 * i / frames for i in range(frames)]
        batch = ORBIT_BATCH if quality == "fast" else 1  # the preview marches 8 views at once ~20 % faster
        chunks = [azimuths[i : i + batch] for i in range(0, frames, batch)]
        return [f for chunk in chunks
                for f in self.render_many(chunk, [elevation] * len(chunk), size, quality, shading=shading,
                                          clean=clean)]

    def orbit_video(self, path, frames: int = 48, size: int = 256, elevation: float = 15.0, fps: int = 24,
                    shading: str = "albedo", clean: bool = True) -> Path:
        """An H.264 MP4 orbit of the object (written atomically); returns its path."""
        return write_mp4(self.orbit_frames(frames, size, elevation, shading=shading, clean=clean), path, fps=fps)

    def nbytes(self) -> int:
        baked = sum(b.nbytes() for b in self._baked.values())
        return self.triplane.numel() * self.triplane.element_size() + baked

    def __repr__(self) -> str:
        return f"Instant3DOutput(prompt={self.prompt!r}, seed={self.seed}, triplane={tuple(self.triplane.shape)})"


class Instant3DPipeline:
    """Text -> triplane in one forward pass; results are cached by (prompt, seed)."""

    def __init__(self, model: Instant3DModel, text_encoder: TextEncoder | None, device=None,
                 cache: ResultCache | None = None, source: Path | None = None,
                 vocabulary: frozenset[str] | None = None):
        self.vocabulary = vocabulary  # words of the training prompts, when the checkpoint lists them
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.text_encoder = text_encoder  # None: the model works from prompt embeddings only
        if text_encoder is not None:
            self.text_encoder.model.to(self.device)
            check_text_encoder_matches(model.config, text_encoder)
        self.cache = cache if cache is not None else ResultCache()
        self.source = source

    @classmethod
    def from_pretrained(cls, path=None, device=None, cache_items: int = 32, cache_bytes: int = 512 * 2**20):
        """Load a checkpoint folder (default: the bundled one) on ``device`` (default: CUDA if available)."""
        folder = Path(path) if path is not None else default_checkpoint()
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model, meta = load_model(folder, device)
        # A converted official checkpoint may name no text encoder: it then takes prompt embeddings only.
        text_encoder = TextEncoder.from_folder(text_encoder_folder(folder, meta), device) \
            if meta.get("text_encoder") else None
        return cls(model, text_encoder, device, ResultCache(cache_items, cache_bytes), source=folder,
                   vocabulary=load_vocabulary(folder))

    @property
    def config(self) -> Instant3DConfig:
        return self.model.config

    @torch.no_grad()
    def __call__(self, prompt: str | None = None, seed: int = 0, *, prompt_embeds: torch.Tensor | None = None,
                 pooled_prompt_embeds: torch.Tensor | None = None,
                 style_noise: torch.Tensor | None = None) -> Instant3DOutput:
        """The object for ``prompt`` and ``seed``; or, the diffusers way, for given ``prompt_embeds`` (1, L, D) (the
        text encoder's token embeddings; ``pooled_prompt_embeds`` (1, D) too for models whose style reads them) and
        optionally ``style_noise`` (1, z_dim) instead of the seed's. Results from a prompt are cached."""
        seed = check_seed(seed)
        z = seed_noise(seed, self.config.generator.z_dim) if style_noise is None else self._check_noise(style_noise)
        if prompt_embeds is not None:
            if prompt is not None:
                raise ValueError("pass either a prompt or prompt_embeds, not both")
            tokens, pooled = self._check_embeds(prompt_embeds, pooled_prompt_embeds)
            return self._generate("", seed, tokens, pooled, z, [], {})
        if self.text_encoder is None:
            raise MissingTextEncoderError(
                f"this model ({self.source or 'in memory'}) was loaded without a text encoder, so it takes "
                "prompt_embeds=, not a prompt. To use prompts, convert it again with --text-encoder <Stable Diffusion "
                "2.1-base folder> (python -m instant3d.convert_official SRC OUT --text-encoder SD_FOLDER)")
        if prompt is None:
            raise ValueError("give a prompt or prompt_embeds")
        text = clean_prompt(prompt)
        key = (text, seed) if style_noise is None else None
        cached = self.cache.get(key) if key else None
        if cached is not None:
            return cached
        start = time.perf_counter()
        notes = [n for n in [self.text_encoder.truncation_note(text), unknown_words_note(text, self.vocabulary)] if n]
        tokens, pooled = self.text_encoder.encode(text)
        out = self._generate(text, seed, tokens, pooled, z, notes, {"text": time.perf_counter() - start})
        if key:
            self.cache.put(key, out)
        return out

    def _generate(self, text, seed, tokens, pooled, z, notes, timings) -> Instant3DOutput:
        start = time.perf_counter()
        triplane = self.model(tokens, pooled, z.to(self.device))
        timings["generator"] = time.perf_counter() - start
        return Instant3DOutput(text, seed, triplane, self.model, notes, timings, self.cache)

    def _check_embeds(self, tokens, pooled):
        want = (self.config.text.num_tokens, self.config.text.token_dim)
        tokens = torch.as_tensor(tokens, dtype=torch.float32, device=self.device)
        if tokens.dim() != 3 or tokens.shape[0] != 1 or tuple(tokens.shape[1:]) != want:
            raise ValueError(f"prompt_embeds must have shape (1, {want[0]}, {want[1]}) for this model, got "
                             f"{tuple(tokens.shape)}")
        if pooled is not None:
            pooled = torch.as_tensor(pooled, dtype=torch.float32, device=self.device)
            if tuple(pooled.shape) != (1, self.config.text.pooled_dim):
                raise ValueError(f"pooled_prompt_embeds must have shape (1, {self.config.text.pooled_dim}), got "
                                 f"{tuple(pooled.shape)}")
        elif self.config.generator.style_text == "pooled":
            raise ValueError("this model's style reads the pooled text embedding: pass pooled_prompt_embeds too")
        if not (torch.isfinite(tokens).all() and (pooled is None or torch.isfinite(pooled).all())):
            raise ValueError("prompt_embeds hold NaN or infinite values")
        return tokens, pooled

    def _check_noise(self, z) -> torch.Tensor:
        z = torch.as_tensor(z, dtype=torch.float32)
        if tuple(z.shape) != (1, self.config.generator.z_dim) or not torch.isfinite(z).all():
            raise ValueError(f"style_noise must be a finite tensor of shape (1, {self.config.generator.z_dim}), got "
                             f"{tuple(z.shape)}")
        return z


def check_text_encoder_matches(config: Instant3DConfig, text_encoder: TextEncoder) -> None:
    """The generator was built for one encoder's token count and width; refuse another with a clear error."""
    want = (config.text.num_tokens, config.text.token_dim)
    got = (text_encoder.max_length, text_encoder.token_dim)
    if want != got:
        raise CheckpointError(
            f"the text encoder gives {got[0]} tokens x {got[1]} dims but the model was built for "
            f"{want[0]} x {want[1]}: use the text encoder the checkpoint was trained with"
        )
