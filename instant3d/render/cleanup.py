"""The object the GLB holds, as a density mask: so that previews and videos show what the export keeps.

The export takes the isosurface at a threshold and drops its small connected pieces (floaters); everything below
the threshold away from the surface (haze) never reaches the mesh. ``object_mask`` finds the same object on a
baked grid: the connected components of density >= threshold holding at least ``keep_fraction`` of the largest
one's voxels, grown by a margin of two voxels so that the soft edge the renderers anti-alias with survives.
``CleanedField`` applies such a mask to a field, so the full renderer can draw the same cleaned object.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)  # 26-neighbours: a diagonal contact joins two pieces, as in a mesh
EDGE_MARGIN = 2  # voxels kept around the solid: the soft edge
# The thinnest part the mesh must keep, as a share of the box's width: 1/48, two voxels of the 96^3 preview grid
# (the toy world's carrot noses are ~3 of these across at their base). The volume renderer draws such a part half
# opaque, seen across, from density ln 2 / thickness; the toy world's quality report counts a voxel as occupied
# from the same density.
THIN_PART = 1 / 48


def rendered_surface_level(density: np.ndarray, voxel: float, solid_level: float) -> float | None:
    """The density at which the volume renderer draws the surface: along the grid's rows, from all six sides, the
    density of the first voxel where the optical depth sum(density * voxel) reaches ln 2 (50 % opacity), the
    median over the rows that reach ``solid_level`` (rows through haze alone say nothing of the object). None if
    no row does."""
    values = []
    for axis in range(3):
        rows = density[tuple(slice(None) if a == axis else slice(None, None, 2) for a in range(3))]  # every 4th row
        for grid in (rows, np.flip(rows, axis)):
            meets = (grid >= solid_level).any(axis=axis)
            crossed = np.cumsum(grid * voxel, axis=axis, dtype=np.float32) >= np.log(2.0)
            first = np.expand_dims(crossed.argmax(axis=axis), axis)
            values.append(np.take_along_axis(grid, first, axis).squeeze(axis)[meets & crossed.any(axis=axis)])
    values = np.concatenate(values)
    return float(np.median(values)) if values.size else None


def thin_part_level(box_width: float) -> float:
    """The density from which a part THIN_PART of the box's width across is drawn half opaque, seen across it."""
    return math.log(2.0) / (THIN_PART * box_width)


def body_surface_level(density: np.ndarray, voxel: float) -> float:
    """Where the renderer shows a body's surface: the lower of half the density the object's interior reaches (its
    99.9th percentile; the midpoint of a sharp edge) and the density where rays reach 50 % opacity (a soft edge, as
    trained fields have, is drawn further out: on a nearest-upsampling default's cones and spheres at ~16 against
    ~35 for half the interior, so a mesh at the half level held 55-75 % of the volume the views show).
    ``voxel``: the grid spacing (world units)."""
    half = float(0.5 * np.percentile(density, 99.9))
    surface = rendered_surface_level(density, voxel, half)
    return half if surface is None else min(half, surface)


def auto_threshold(density: np.ndarray, voxel: float) -> float:
    """The surface the renderer shows: ``body_surface_level``, but no higher than ``thin_part_level``. The median
    row meets a body, and a denser body (~130 inside) put that level at 30-56, above its noses and beaks (~20-30),
    which the views draw but the mesh and the cleaned preview then dropped. The grid spans the box."""
    return min(body_surface_level(density, voxel), thin_part_level(voxel * density.shape[0]))


def object_mask(density: np.ndarray, level: float, keep_fraction: float = 0.05,
                margin: int = EDGE_MARGIN) -> np.ndarray:
    """bool mask (same shape as ``density``): the kept pieces of {density >= level}, grown by ``margin`` voxels.
    All False if nothing reaches the level."""
    solid = density >= level
    labels, count = ndimage.label(solid, structure=CONNECTIVITY)
    if count == 0:
        return np.zeros_like(solid)
    sizes = np.bincount(labels.ravel())[1:]
    kept = np.isin(labels, np.flatnonzero(sizes >= keep_fraction * sizes.max()) + 1)
    return ndimage.binary_dilation(kept, structure=CONNECTIVITY, iterations=margin) if margin else kept


class CleanedField(torch.nn.Module):
    """A field whose density is multiplied by a mask over the box, read trilinearly: the full renderer's view of
    the object the preview shows. Albedo and normals are the field's own."""

    def __init__(self, field, mask: torch.Tensor):
        super().__init__()
        self.field, self.cfg = field, field.cfg
        self.mask = mask.float()[None, None]  # (1, 1, z, y, x)

    def mask_at(self, points: torch.Tensor) -> torch.Tensor:
        coords = (points / self.cfg.bound).reshape(1, -1, 1, 1, 3)
        values = F.grid_sample(self.mask.to(points), coords, mode="bilinear", padding_mode="zeros",
                               align_corners=False)
        return values.reshape(points.shape[:-1])

    def forward(self, planes, points, alpha=None):
        density, albedo = self.field(planes, points, alpha)
        return density * self.mask_at(points), albedo

    def normals(self, planes, points, eps: float = 0.01):
        return self.field.normals(planes, points, eps)
