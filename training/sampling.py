"""What each training step draws at random: cameras, backgrounds, shading and light; and the alpha schedule.

Camera ranges follow the paper (radius [3.0, 3.6], fov [70, 80] deg, polar angle [25, 110] deg, i.e. elevation
[-20, 65] deg, uniform azimuth) scaled to the model's box by the config; azimuth 0 = front (docs/DESIGN.md §3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from instant3d.render.cameras import Cameras, camera_positions, look_at, orbit_cameras


@dataclass
class CameraRanges:
    radius: tuple[float, float] = (3.0, 3.6)
    fov_deg: tuple[float, float] = (35.0, 45.0)
    elevation_deg: tuple[float, float] = (-20.0, 65.0)  # polar angle 110 .. 25 deg
    front_bias: float = 0.0  # extra probability of an azimuth within +-45 deg of the front


@dataclass
class ViewBatch:
    cameras: Cameras
    azimuth: torch.Tensor  # (B,) degrees in [0, 360)
    elevation: torch.Tensor  # (B,) degrees
    background: torch.Tensor  # (B, 3) linear colours
    shading: str  # one mode per step, as DreamFusion
    light_dirs: torch.Tensor  # (B, 3) unit vectors


def _uniform(lo_hi, n, gen):
    lo, hi = lo_hi
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def sample_views(n: int, ranges: CameraRanges, shading_probs: dict[str, float], gen: torch.Generator,
                 device="cpu") -> ViewBatch:
    """n random cameras looking at the origin, random solid backgrounds, a shading mode and light directions."""
    azimuth = 360 * torch.rand(n, generator=gen)
    if ranges.front_bias > 0:
        front = torch.rand(n, generator=gen) < ranges.front_bias
        azimuth = torch.where(front, torch.remainder(90 * torch.rand(n, generator=gen) - 45, 360), azimuth)
    elevation = _uniform(ranges.elevation_deg, n, gen)
    radius = _uniform(ranges.radius, n, gen)
    fov = _uniform(ranges.fov_deg, n, gen)
    cameras = orbit_cameras(azimuth, elevation, radius, fov, device=device)
    background = torch.rand(n, 3, generator=gen)
    modes, probs = zip(*sorted(shading_probs.items()))
    mode = modes[int(torch.multinomial(torch.tensor(probs, dtype=torch.float), 1, generator=gen))]
    # light near the camera, as the official code does: normalize(camera position + N(0, I))
    light = F.normalize(cameras.position.cpu() + torch.randn(n, 3, generator=gen), dim=-1)
    return ViewBatch(cameras, azimuth, elevation, background.to(device), mode, light.to(device))


def close_up_views(views: ViewBatch, targets: torch.Tensor, chosen: torch.Tensor, ranges: CameraRanges,
                   zoom: tuple[float, float], gen: torch.Generator, side_deg: float = 60.0) -> ViewBatch:
    """``views`` with the ``chosen`` (B,) cameras replaced by close-ups of ``targets`` (B, 3): a camera at the usual
    distance from the target, on its side of the object (azimuth within +-``side_deg`` of the target's own), looking
    at it with the field of view narrowed by a zoom drawn from ``zoom``.

    Why: a part 1-3 pixels wide in a whole-object view (a snowman's nose at 48^2) gets too few rays to be learnt; a
    close-up at zoom 3 spreads it over 5-10 pixels with the same rays per image.
    """
    n = len(views.cameras)
    own_azimuth = torch.rad2deg(torch.atan2(targets[:, 0].cpu(), targets[:, 2].cpu()))
    azimuth = torch.remainder(own_azimuth + side_deg * (2 * torch.rand(n, generator=gen) - 1), 360)
    elevation = _uniform(ranges.elevation_deg, n, gen)
    radius = _uniform(ranges.radius, n, gen)
    factor = _uniform(zoom, n, gen)
    device = views.cameras.position.device
    position = (targets.cpu() + camera_positions(azimuth, elevation, radius)).to(device)
    rotation = look_at(position, targets.to(device))
    pick = chosen.to(device)
    cameras = Cameras(torch.where(pick[:, None, None], rotation, views.cameras.rotation),
                      torch.where(pick[:, None], position, views.cameras.position),
                      torch.where(pick, views.cameras.fov_deg / factor.to(device), views.cameras.fov_deg))
    light = F.normalize(position.cpu() + torch.randn(n, 3, generator=gen), dim=-1).to(views.light_dirs.device)
    return ViewBatch(cameras, torch.where(chosen.cpu(), azimuth, views.azimuth.cpu()).to(views.azimuth.device),
                     torch.where(chosen.cpu(), elevation, views.elevation.cpu()).to(views.elevation.device),
                     views.background, views.shading,
                     torch.where(pick[:, None], light, views.light_dirs))


def alpha_schedule(step: int, start: float = 0.5, begin: int = 0, end: int = 1000) -> float:
    """Scaled-sigmoid alpha: ``start`` until ``begin``, linear to exactly 1 at ``end``, 1 afterwards."""
    if not 0 < start <= 1:
        raise ValueError(f"the scaled-sigmoid alpha must start in (0, 1], got {start}")
    if step >= end:
        return 1.0
    if step <= begin:
        return start
    return start + (1.0 - start) * (step - begin) / (end - begin)
