"""A "generator" that returns each prompt's exact scene, with the pipeline's output interface.

Why: scored by the same evaluation code, it gives the ceiling of every metric (IoU and colour accuracy 1 by
construction; R-precision limited only by the evaluation CLIP and the prompts' own ambiguities, e.g. size words
seen from one fixed camera), so a generator's R-precision can be read against what a perfect one would get.
"""

from __future__ import annotations

import numpy as np
import torch

from instant3d.render.cameras import orbit_cameras
from instant3d.render.color import to_uint8_srgb
from instant3d.config import RenderConfig
from instant3d.render.shading import DISPLAY_AMBIENT, check_shading, display_light

from .metrics import voxel_centres
from .render import render_scene
from .scenes import Scene, scene_for_prompt


class GroundTruthOutput:
    """One scene behind the part of ``Instant3DOutput``'s interface the evaluation uses (optionally shifted, or
    always rendered from one azimuth: how tests build imperfect objects)."""

    def __init__(self, scene: Scene, render_config: RenderConfig | None = None, shift=(0.0, 0.0, 0.0),
                 render_as: float | None = None, bound: float = 1.0):
        self.scene, self.shift, self.bound = scene, torch.tensor(shift), bound
        self.render_config = render_config or RenderConfig()
        self.render_as = render_as

    def density_grid(self, resolution: int) -> torch.Tensor:
        """Very dense inside, empty outside: every occupied voxel absorbs all the light crossing it."""
        inside = self.scene.occupancy(voxel_centres(resolution, self.bound) - self.shift)
        return (inside.float() * 1e4).view(resolution, resolution, resolution)

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        return self.scene.albedo(points.cpu() - self.shift)

    def density(self, points: torch.Tensor) -> torch.Tensor:
        return self.scene.occupancy(points.cpu() - self.shift).float() * 1e4

    def render_many(self, azimuths, elevations, size: int = 256, background=None,
                    shading: str = "albedo") -> list[np.ndarray]:
        cfg = self.render_config
        if self.render_as is not None:
            azimuths = [self.render_as] * len(azimuths)
        cams = orbit_cameras(list(azimuths), list(elevations), cfg.camera_radius, cfg.fov_deg)
        bg = torch.tensor(cfg.background if background is None else background, dtype=torch.float32)
        lit = check_shading(shading) == "lit"  # lit: the pipeline's display light
        images, _ = render_scene(self.scene, cams, size, bg.expand(len(cams), 3), "lambertian" if lit else "albedo",
                                 display_light(cams.position) if lit else None, ambient=DISPLAY_AMBIENT)
        return [to_uint8_srgb(img) for img in images]

    def render(self, azimuth: float = 0.0, elevation: float = 15.0, size: int = 256, background=None,
               shading: str = "albedo") -> np.ndarray:
        return self.render_many([azimuth], [elevation], size, background, shading)[0]


class _NoCache:
    def clear(self) -> None:
        pass


class GroundTruthPipeline:
    """``pipe(prompt, seed)`` -> the prompt's exact scene (seed ignored), for ``training.evaluate``."""

    def __init__(self, render_config: RenderConfig | None = None):
        self.render_config = render_config or RenderConfig()
        self.cache = _NoCache()
        self.device = torch.device("cpu")

    def __call__(self, prompt: str, seed: int = 0) -> GroundTruthOutput:
        return GroundTruthOutput(scene_for_prompt(prompt), self.render_config)
