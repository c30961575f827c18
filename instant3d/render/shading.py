"""One Lambertian light model for every renderer (training, preview, ground truth), and the display light.

Why a display light: flat albedo hides shape. Seen face on, a flat-coloured cube and cylinder are the same
rectangle, a pyramid and a cone the same triangle; a light above the camera gives their faces different
brightness, as any 3D viewer does. Training draws its own light directions (training.sampling).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SHADINGS = ("albedo", "lit")  # what the pipeline's display renders offer: flat colour, or the display light
DISPLAY_AMBIENT = 0.3  # shadowed sides stay readable
DISPLAY_LIGHT_RAISE = 0.6  # the light sits above the camera: about 30 degrees over the view direction


def lambert_factor(normals: torch.Tensor, light_dirs: torch.Tensor, ambient: float) -> torch.Tensor:
    """ambient + (1 - ambient) max(n.l, 0), with a trailing 1 to multiply colours: (..., 3) -> (..., 1)."""
    return ambient + (1 - ambient) * (normals * light_dirs).sum(-1, keepdim=True).clamp_min(0)


def display_light(camera_positions: torch.Tensor) -> torch.Tensor:
    """Unit light directions (B, 3) for cameras at (B, 3): towards the camera, raised over it (world +Y up)."""
    up = torch.tensor([0.0, DISPLAY_LIGHT_RAISE, 0.0], device=camera_positions.device)
    return F.normalize(F.normalize(camera_positions, dim=-1) + up, dim=-1)


def per_camera_lights(light_dirs: torch.Tensor, cameras: int) -> torch.Tensor:
    """(cameras, 3) light directions from (cameras, 3) or one shared (1, 3) / (3,)."""
    light_dirs = light_dirs.reshape(-1, 3)
    if light_dirs.shape[0] == 1:
        return light_dirs.expand(cameras, 3)
    if light_dirs.shape[0] != cameras:
        raise ValueError(f"need one light direction per camera ({cameras}) or one for all, got {light_dirs.shape[0]}")
    return light_dirs


def check_shading(shading: str) -> str:
    if shading not in SHADINGS:
        raise ValueError(f"shading must be one of {', '.join(SHADINGS)}, got {shading!r}")
    return shading
