"""Exact surface samples of a toy-world prompt: points on its scene's surface and the surface's normals there, for
the supervised objective's normal term (``objective.normal_weight``).

Why: a generator trained on renders alone keeps ripples in its density (a cylinder's side in bands, a cone's in
ridges; docs/toyworld.md, "Where R-precision is lost") that colour and coverage barely see but lit views show.
The exact scenes know their normals, so the objective can ask for them directly.
"""

from __future__ import annotations

import functools

import torch

from .metrics import surface_points
from .render import scene_normals
from .scenes import scene_for_prompt


@functools.lru_cache(maxsize=1024)
def exact_surface(prompt: str, resolution: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Every surface voxel of the prompt's scene at ``resolution``^3, moved onto the exact surface along the SDF's
    gradient, and the unit outward normal there: (points (N, 3), normals (N, 3))."""
    scene = scene_for_prompt(prompt)
    points = surface_points(scene, resolution)
    normals = scene_normals(scene, points)
    points = points - scene.sdf(points)[:, None] * normals  # onto the zero level set (an exact SDF's gradient)
    return points, scene_normals(scene, points)


def surface_normals(prompt: str, count: int, generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` points drawn (with replacement) from the prompt's exact surface, and its normals there."""
    points, normals = exact_surface(prompt)
    chosen = torch.randint(len(points), (count,), generator=generator)
    return points[chosen], normals[chosen]
