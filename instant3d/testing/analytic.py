"""Analytic scenes (signed distance + albedo) and a direct 3-D fit of a triplane to them.

Used where we need a triplane that holds a real object without a trained generator: the inference
benchmark (the fast preview must be measured on a real object, not random weights) and tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from instant3d.models.field import TriplaneField


@dataclass
class AnalyticScene:
    """An object as a signed distance function (negative inside) and an albedo function, both on (N, 3)."""

    sdf: Callable[[torch.Tensor], torch.Tensor]
    albedo: Callable[[torch.Tensor], torch.Tensor]

    def density(self, points: torch.Tensor, inside: float = 40.0, width: float = 0.01) -> torch.Tensor:
        """A solid with density ``inside`` and a soft edge ``width`` wide."""
        return inside * torch.sigmoid(-self.sdf(points) / width)


def _color(rgb) -> Callable[[torch.Tensor], torch.Tensor]:
    value = torch.tensor(rgb, dtype=torch.float32)
    return lambda p: value.to(p.device).expand(p.shape[0], 3)


def sphere(radius: float = 0.5, rgb=(0.8, 0.2, 0.1), center=(0.0, 0.0, 0.0)) -> AnalyticScene:
    c = torch.tensor(center)
    return AnalyticScene(lambda p: (p - c.to(p.device)).norm(dim=-1) - radius, _color(rgb))


def box(half: float = 0.4, rgb=(0.2, 0.6, 0.2)) -> AnalyticScene:
    """An axis-aligned cube of half-size ``half`` centred at the origin (exact signed distance)."""

    def sdf(p):
        q = p.abs() - half
        return q.clamp_min(0).norm(dim=-1) + q.amax(dim=-1).clamp_max(0)

    return AnalyticScene(sdf, _color(rgb))


def front_back_sphere(radius: float = 0.5, front=(1.0, 0.0, 0.0), back=(0.0, 0.0, 1.0)) -> AnalyticScene:
    """A sphere coloured ``front`` where z > 0 (the side facing azimuth 0) and ``back`` elsewhere."""
    f, b = torch.tensor(front), torch.tensor(back)
    return AnalyticScene(lambda p: p.norm(dim=-1) - radius,
                         lambda p: torch.where((p[:, 2] > 0)[:, None], f.to(p.device), b.to(p.device)))


class AnalyticSource:
    """An analytic scene seen through the exporter's interface (``instant3d.export.mesh.DensitySource``)."""

    def __init__(self, scene: AnalyticScene, bound: float = 1.0):
        self.scene, self.bound = scene, bound

    def density_grid(self, resolution: int) -> torch.Tensor:
        c = ((torch.arange(resolution) + 0.5) / resolution * 2 - 1) * self.bound
        zz, yy, xx = torch.meshgrid(c, c, c, indexing="ij")
        points = torch.stack([xx, yy, zz], dim=-1).reshape(-1, 3)
        return self.scene.density(points).reshape(resolution, resolution, resolution)

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        return self.scene.albedo(points)


def snowman() -> AnalyticScene:
    """Two white spheres and an orange cone nose pointing at +Z (the front), plus two black eyes."""
    body_c, head_c = torch.tensor([0.0, -0.3, 0.0]), torch.tensor([0.0, 0.3, 0.0])

    def sdf(p):
        body = (p - body_c).norm(dim=-1) - 0.42
        head = (p - head_c).norm(dim=-1) - 0.28
        # nose: a cone along +Z from the head's surface, length 0.3, base radius 0.07
        q = p - torch.tensor([0.0, 0.3, 0.22])
        along = q[:, 2].clamp(0, 0.3)
        radial = q[:, :2].norm(dim=-1)
        nose = torch.maximum(radial - 0.07 * (1 - along / 0.3), torch.maximum(-q[:, 2], q[:, 2] - 0.3))
        return torch.minimum(torch.minimum(body, head), nose)

    def albedo(p):
        out = torch.full((p.shape[0], 3), 0.92)
        nose = (p[:, 2] > 0.24) & ((p[:, :2] - torch.tensor([0.0, 0.3])).norm(dim=-1) < 0.09)
        out[nose] = torch.tensor([0.95, 0.45, 0.05])
        for x in (-0.1, 0.1):
            eye = (p - torch.tensor([x, 0.4, 0.24])).norm(dim=-1) < 0.06
            out[eye] = torch.tensor([0.05, 0.05, 0.05])
        return out

    return AnalyticScene(sdf, albedo)


def fit_triplane(
    field: TriplaneField,
    scene: AnalyticScene,
    resolution: int,
    steps: int = 300,
    batch: int = 2**14,
    lr: float = 0.03,
    seed: int = 0,
) -> torch.Tensor:
    """Fit a free triplane (and the field's MLP) so the field reproduces the scene; returns planes (1, 3, C, R, R).

    Direct supervision on points: log-density error everywhere, albedo error where the scene is solid.
    Half the points are uniform in the box, half near the object (within 0.9 of the origin).
    """
    gen = torch.Generator().manual_seed(seed)
    bound = field.cfg.bound
    field.requires_grad_(True)
    planes = torch.nn.Parameter(0.1 * torch.randn(1, 3, field.plane_channels, resolution, resolution, generator=gen))
    opt = torch.optim.Adam([{"params": [planes], "lr": lr}, {"params": field.parameters(), "lr": lr / 10}])
    for _ in range(steps):
        uniform = (torch.rand(batch // 2, 3, generator=gen) * 2 - 1) * bound
        near = (torch.rand(batch // 2, 3, generator=gen) * 2 - 1) * min(0.9, bound)
        points = torch.cat([uniform, near])
        target_sigma = scene.density(points)
        sigma, albedo = field(planes, points[None])
        solid = (target_sigma > 1.0).float()
        loss = F.mse_loss(torch.log1p(sigma[0]), torch.log1p(target_sigma))
        loss = loss + ((albedo[0] - scene.albedo(points)) ** 2).sum(-1).mul(solid).sum() / solid.sum().clamp_min(1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return planes.detach()
