"""The fast preview: bake the field once onto a grid, then ray-march that grid for each view.

Why this shape (measured in bench/inference.py): direct 256^2 x 128-sample rendering of the triplane costs
seconds a frame on 2 cores (docs/DESIGN.md §5). Baking is exact at the grid points and cheap
(``TriplaneField.bake``); each frame then marches only rays that hit the box around occupied voxels,
a few samples at a time, and drops a ray as soon as it is opaque (early termination).
"""

from __future__ import annotations

from dataclasses import dataclass

import nerfacc
import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_cdt

from instant3d.render.cameras import Cameras, generate_rays, ray_box_intersect
from instant3d.render.cleanup import auto_threshold, object_mask
from instant3d.models.field import TriplaneField
from instant3d.render.shading import DISPLAY_AMBIENT, lambert_factor, per_camera_lights


@dataclass
class BakedVolume:
    """Density and albedo on a G^3 grid of cell centres over [-bound, bound]^3,
    plus, per voxel, a conservative distance (world units) to the nearest voxel whose density matters."""

    grid: torch.Tensor  # (1, 4, z, y, x): density, r, g, b
    resolution: int
    box_min: torch.Tensor  # (3,) a box around every occupied voxel: rays that miss it see only background
    box_max: torch.Tensor
    free_distance: torch.Tensor  # (G^3,) flattened (z, y, x); 0 inside or next to occupied voxels
    bound: float
    empty: bool
    keep: torch.Tensor | None = None  # (z, y, x) bool: the cleaned object's voxels, if the bake was cleaned

    @classmethod
    def from_field(
        cls,
        field: TriplaneField,
        planes: torch.Tensor,
        resolution: int = 128,
        alpha: float | None = None,
        occupancy_threshold: float = 0.1,
        clean: bool = False,
    ) -> "BakedVolume":
        """Bake the field; voxels with density below ``occupancy_threshold`` (per world unit) count as empty.
        With ``clean``, the density outside the object the export keeps (at the export's "auto" threshold, small
        pieces dropped) is zeroed: no haze, no floaters
        (``instant3d.render.cleanup``); ``keep`` then holds that mask.

        The threshold bounds what skipping can lose: a ray crossing the whole box through such fog would
        gather at most 1 - exp(-0.1 * 3.5) = 30 % opacity in theory; in practice such fog is a thin shell
        around the surface and the preview stays > 40 dB from the full renderer (bench/inference.py).
        """
        grid = field.bake(planes, resolution, alpha=alpha)
        keep = None
        voxel = 2 * field.cfg.bound / resolution
        if clean:
            density = grid[0].cpu().numpy()
            keep = torch.from_numpy(object_mask(density, auto_threshold(density, voxel)))
            grid[0] *= keep.to(grid)
        occupied = (grid[0] > occupancy_threshold).cpu().numpy()
        empty = not occupied.any()
        if empty:
            free = torch.full((resolution**3,), float("inf"))
        else:
            # k = chessboard distance (voxels) from a voxel centre n to the nearest occupied centre. A point p
            # whose nearest centre is n reads trilinear corners within 1 voxel of n (L-inf); after moving s,
            # its corners lie within s/voxel + 2 of n. So every corner stays unoccupied while s < (k - 2) voxels.
            steps = distance_transform_cdt(~occupied, metric="chessboard").astype(np.float32)
            free = torch.from_numpy(np.clip(steps - 2.0, 0.0, None) * voxel).reshape(-1)
        box_min, box_max = _occupied_box(occupied, field.cfg.bound, margin=2)
        return cls(grid=grid[None].contiguous(), resolution=resolution, box_min=box_min.to(grid.device),
                   box_max=box_max.to(grid.device), free_distance=free.to(grid.device), bound=field.cfg.bound,
                   empty=empty, keep=keep)

    def nbytes(self) -> int:
        keep = self.keep.numel() if self.keep is not None else 0  # bool: a byte a voxel
        return keep + sum(t.numel() * t.element_size() for t in (self.grid, self.free_distance))

    def normals(self, points: torch.Tensor) -> torch.Tensor:
        """Unit normals -grad(density) at world points (N, 3) by central differences of the trilinear density,
        one voxel apart (6 single-channel reads a point)."""
        h = self.bound / self.resolution  # half a voxel each way
        offsets = torch.eye(3, device=points.device, dtype=points.dtype) * h
        shifted = torch.cat([points[:, None] + offsets, points[:, None] - offsets], dim=1)  # (N, 6, 3)
        coords = (shifted / self.bound).view(1, -1, 1, 1, 3)
        density = F.grid_sample(self.grid[:, :1], coords, mode="bilinear", padding_mode="zeros",
                                align_corners=False).view(-1, 6)
        return F.normalize(density[:, 3:] - density[:, :3], dim=-1, eps=1e-8)

    def sample(self, points: torch.Tensor) -> torch.Tensor:
        """Trilinear (density, r, g, b) at world points (N, 3) -> (N, 4)."""
        coords = (points / self.bound).view(1, -1, 1, 1, 3)
        values = F.grid_sample(self.grid, coords, mode="bilinear", padding_mode="zeros", align_corners=False)
        return values.view(4, -1).T

    def distance_to_occupied(self, points: torch.Tensor) -> torch.Tensor:
        """A lower bound (world units) on how far points (N, 3) can move before density could matter."""
        g = self.resolution
        idx = ((points / self.bound + 1) * (g / 2)).floor().long().clamp(0, g - 1)
        return self.free_distance[(idx[:, 2] * g + idx[:, 1]) * g + idx[:, 0]]

    @torch.no_grad()
    def render(
        self,
        cameras: Cameras,
        size: int,
        background=(1.0, 1.0, 1.0),
        step: float = 1.0,
        samples_per_round: int = 8,
        min_transmittance: float = 1e-3,
        light_dirs: torch.Tensor | None = None,
        ambient: float = DISPLAY_AMBIENT,
    ) -> torch.Tensor:
        """Images (B, H, W, 3) in [0, 1]. ``step`` is the march step in voxels. With ``light_dirs`` (B, 3), one
        per camera, the albedo is lit (Lambertian); without, it is shown flat.

        Lighting is deferred: each pixel's composited albedo is shaded once, with the density's normal at the ray's
        expected depth, instead of at every sample (what the full renderer does). For the surfaces of trained
        objects the two agree (bench/inference.py: PSNR lit fast vs full); it costs 6 density reads a pixel.

        Each round, a ray either jumps across empty space (when the distance bound covers the next
        ``samples_per_round`` steps) or composites ``samples_per_round`` samples; it stops when it leaves
        the box or its transmittance falls below ``min_transmittance``.
        """
        origins, dirs = generate_rays(cameras, size)
        shape = origins.shape
        origins, dirs = origins.reshape(-1, 3), dirs.reshape(-1, 3)
        bg = torch.as_tensor(background, dtype=torch.float32, device=origins.device)
        lights = None if light_dirs is None else per_camera_lights(light_dirs, len(cameras)).to(origins)
        image = bg.expand(origins.shape[0], 3).clone()
        if self.empty:
            return image.view(shape)
        t_near, t_far, hit = ray_box_intersect(origins, dirs, self.box_min, self.box_max)
        ids = hit.nonzero().squeeze(-1)
        # One row per unfinished ray, packed so that dropping finished rays is a single index operation:
        # origin (0:3), direction (3:6), t (6), t_far (7), transmittance (8), colour (9:12), pixel index (12),
        # sum of weight x depth (13).
        zero = torch.zeros_like(t_near[ids, None])
        state = torch.cat([origins[ids], dirs[ids], t_near[ids, None], t_far[ids, None], 1 + zero,
                           torch.zeros_like(origins[ids]), ids[:, None].to(origins.dtype), zero], dim=1)
        finished_rows = []
        dt = step * 2 * self.bound / self.resolution
        k = torch.arange(samples_per_round, device=origins.device, dtype=torch.float32) * dt
        while state.shape[0] > 0:
            o, d, t = state[:, 0:3], state[:, 3:6], state[:, 6]
            free = self.distance_to_occupied(o + d * t[:, None])
            march = free < dt  # the rest jump ahead by their distance bound (sphere tracing) this round
            state[:, 6] += torch.where(march, torch.zeros_like(free), free)
            m = march.nonzero().squeeze(-1)
            if m.numel() > 0:
                rows = state[m]
                starts = rows[:, 6:7] + k  # (M, K)
                ends = torch.minimum(starts + dt, rows[:, 7:8])
                points = rows[:, None, 0:3] + rows[:, None, 3:6] * (0.5 * (starts + ends))[..., None]
                values = self.sample(points.view(-1, 3)).view(*starts.shape, 4)
                alphas = 1 - torch.exp(-values[..., 0] * (ends - starts).clamp_min(0))
                weights, _ = nerfacc.render_weight_from_alpha(alphas)
                t_in = rows[:, 8:9]
                rows[:, 9:12] += t_in * (weights[..., None] * values[..., 1:]).sum(dim=1)
                rows[:, 13:14] += t_in * (weights * 0.5 * (starts + ends)).sum(dim=1, keepdim=True)
                rows[:, 8:9] = t_in * torch.prod(1 - alphas, dim=1, keepdim=True)
                rows[:, 6] += samples_per_round * dt
                state[m] = rows
            done = (state[:, 8] <= min_transmittance) | (state[:, 6] >= state[:, 7])
            if bool(done.any()):
                finished_rows.append(state[done])
                state = state[~done]
        if finished_rows:
            rays = torch.cat(finished_rows)
            colour = rays[:, 9:12]
            if lights is not None:
                opacity = (1 - rays[:, 8:9]).clamp_min(1e-8)
                depth = rays[:, 13:14] / opacity  # expected depth of the object part of the ray
                normals = self.normals(rays[:, 0:3] + rays[:, 3:6] * depth)
                light = lights[rays[:, 12].long() // (shape[1] * shape[2])]
                colour = colour * lambert_factor(normals, light, ambient)
            image[rays[:, 12].long()] = colour + rays[:, 8:9] * bg
        return image.view(shape)


def _occupied_box(occupied: np.ndarray, bound: float, margin: int):
    """World-space box around the occupied voxels of a (z, y, x) mask, grown by ``margin`` voxels."""
    g = occupied.shape[0]
    if not occupied.any():
        return torch.zeros(3), torch.zeros(3)
    idx = np.argwhere(occupied)[:, ::-1]  # (x, y, z)
    voxel = 2 * bound / g
    lo = np.maximum(-bound, -bound + (idx.min(axis=0) - margin) * voxel)
    hi = np.minimum(bound, -bound + (idx.max(axis=0) + 1 + margin) * voxel)
    return torch.tensor(lo, dtype=torch.float32), torch.tensor(hi, dtype=torch.float32)
