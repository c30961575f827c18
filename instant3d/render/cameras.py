"""Cameras and rays in the project's world frame (docs/DESIGN.md §3).

Right-handed, +Y up, the object's front faces +Z. Azimuth 0 deg puts the camera on +Z looking at the front;
azimuth grows counter-clockwise seen from above (90 deg = camera on +X). Elevation 0 = horizon, positive =
above. Cameras are OpenGL-style: they look along their own -Z, with +Y up in the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Cameras:
    """A batch of pinhole cameras: camera-to-world rotations (B, 3, 3), positions (B, 3), vertical fov."""

    rotation: torch.Tensor
    position: torch.Tensor
    fov_deg: torch.Tensor  # (B,)

    def __len__(self) -> int:
        return self.position.shape[0]


def _as_tensor(x, device=None) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float32, device=device).reshape(-1)


def camera_positions(azimuth_deg, elevation_deg, radius) -> torch.Tensor:
    """Positions (B, 3) on a sphere around the origin: (r cos(el) sin(az), r sin(el), r cos(el) cos(az))."""
    az, el = torch.deg2rad(_as_tensor(azimuth_deg)), torch.deg2rad(_as_tensor(elevation_deg))
    az, el, r = torch.broadcast_tensors(az, el, _as_tensor(radius))
    return torch.stack([r * el.cos() * az.sin(), r * el.sin(), r * el.cos() * az.cos()], dim=-1)


def look_at(position: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Camera-to-world rotations (B, 3, 3) whose columns are the camera's right, up and back (+Z) axes."""
    target = torch.zeros_like(position) if target is None else target
    back = F.normalize(position - target, dim=-1)
    up_world = torch.tensor([0.0, 1.0, 0.0], device=position.device).expand_as(back)
    # Straight above or below, +Y is parallel to the view: use -Z (or +Z) as "up" so the image stays upright.
    vertical = (back[..., 1].abs() > 1 - 1e-6)[..., None]
    alt_up = torch.tensor([0.0, 0.0, -1.0], device=position.device) * torch.sign(back[..., 1:2])
    up_world = torch.where(vertical, alt_up, up_world)
    right = F.normalize(torch.cross(up_world, back, dim=-1), dim=-1)
    up = torch.cross(back, right, dim=-1)
    return torch.stack([right, up, back], dim=-1)


def orbit_cameras(azimuth_deg, elevation_deg, radius=3.2, fov_deg=40.0, device=None) -> Cameras:
    """Cameras on an orbit around the origin, looking at it; every argument may be a scalar or a (B,) list."""
    position = camera_positions(azimuth_deg, elevation_deg, radius)
    fov = _as_tensor(fov_deg).expand(position.shape[0]).clone()
    position = position.to(device) if device is not None else position
    return Cameras(rotation=look_at(position), position=position, fov_deg=fov.to(position.device))


def generate_rays(cameras: Cameras, height: int, width: int | None = None):
    """Ray origins and unit directions through pixel centres: (B, H, W, 3) each. Row 0 is the image top."""
    width = height if width is None else width
    device = cameras.position.device
    focal = 0.5 * height / torch.tan(torch.deg2rad(cameras.fov_deg) / 2)  # (B,) in pixels
    j, i = torch.meshgrid(
        torch.arange(height, device=device, dtype=torch.float32) + 0.5,
        torch.arange(width, device=device, dtype=torch.float32) + 0.5,
        indexing="ij",
    )
    x = (i - width / 2)[None] / focal[:, None, None]
    y = -(j - height / 2)[None] / focal[:, None, None]
    dirs_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)  # (B, H, W, 3)
    dirs = torch.einsum("bij,bhwj->bhwi", cameras.rotation, dirs_cam)
    dirs = F.normalize(dirs, dim=-1)
    origins = cameras.position[:, None, None, :].expand_as(dirs)
    return origins, dirs


def ray_box_intersect(origins: torch.Tensor, dirs: torch.Tensor, box_min, box_max):
    """Slab test against an axis-aligned box. Returns (t_near, t_far, hit); t_near >= 0 (origins inside start at 0).

    ``box_min``/``box_max`` are floats or (3,) tensors. Rays that miss have hit = False and t_near = t_far = 0.
    """
    box_min = torch.as_tensor(box_min, dtype=origins.dtype, device=origins.device).expand(3)
    box_max = torch.as_tensor(box_max, dtype=origins.dtype, device=origins.device).expand(3)
    safe = torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)
    inv = 1.0 / safe
    t0, t1 = (box_min - origins) * inv, (box_max - origins) * inv
    t_near = torch.minimum(t0, t1).amax(dim=-1).clamp_min(0.0)
    t_far = torch.maximum(t0, t1).amin(dim=-1)
    hit = t_far > t_near
    zero = torch.zeros_like(t_near)
    return torch.where(hit, t_near, zero), torch.where(hit, t_far, zero), hit

