"""Mesh export: a textured GLB (and OBJ + MTL + PNG in a zip) from any object's density and albedo.

Stages (each timed, see ``ExportResult.timings``):
grid (density at N^3 cell centres) -> marching cubes -> cleanup (drop small floaters) -> decimation
(trimesh + fast-simplification) -> UVs (xatlas) -> bake (rasterise triangles in UV space, query the albedo
just inside the surface at every texel, pad seams) -> write (trimesh GLB, texture as an sRGB PNG).

Orientation needs nothing: the world frame is glTF's (+Y up, front +Z). Colours: the field's albedo is
linear; a glTF base-colour texture is sRGB-encoded, while glTF vertex colours (COLOR_0) are linear, so
each is written in its own space (a common reason exports look darker elsewhere).
"""

from __future__ import annotations

import io
import time
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import trimesh
import xatlas
from PIL import Image
from scipy.ndimage import distance_transform_edt
from skimage.measure import marching_cubes

from instant3d.render.cleanup import auto_threshold
from instant3d.render.color import linear_to_srgb, srgb_to_linear
from instant3d.io.files import atomic_path

MAX_RESOLUTION = 384
MAX_TEXTURE = 4096
MAX_FACES = 200_000


class ExportError(ValueError):
    """An export that cannot be made as asked; the message says what to change."""


class DensitySource(Protocol):
    """What the exporter needs of an object."""

    bound: float

    def density_grid(self, resolution: int) -> torch.Tensor:
        """Density at the cell centres of a resolution^3 grid over [-bound, bound]^3, indexed (z, y, x)."""

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        """Albedo (N, 3) at world points (N, 3): linear, or display values if ``albedo_space`` is "display"."""


@dataclass
class ExportOptions:
    resolution: int = 128  # density grid N^3
    threshold: float | str = 10.0  # density of the surface, or "auto"
    target_faces: int = 5000  # decimate to at most this many triangles
    texture_size: int = 512  # base-colour texture, square: ~100 texels a triplane cell of the default's objects
    vertex_colors: bool = False  # fast mode: no UVs or texture, linear vertex colours
    keep_fraction: float = 0.05  # drop connected pieces with fewer faces than this share of the largest

    def __post_init__(self) -> None:
        if not isinstance(self.resolution, (int, np.integer)) or not 16 <= self.resolution <= MAX_RESOLUTION:
            raise ExportError(f"grid resolution must be a whole number from 16 to {MAX_RESOLUTION}, "
                              f"got {self.resolution!r}")
        if not isinstance(self.texture_size, (int, np.integer)) or not 64 <= self.texture_size <= MAX_TEXTURE:
            raise ExportError(f"texture size must be a whole number from 64 to {MAX_TEXTURE}, "
                              f"got {self.texture_size!r}")
        if not isinstance(self.target_faces, (int, np.integer)) or not 100 <= self.target_faces <= MAX_FACES:
            raise ExportError(f"target faces must be a whole number from 100 to {MAX_FACES}, got {self.target_faces!r}")
        if isinstance(self.threshold, str):
            if self.threshold != "auto":
                raise ExportError(f"threshold must be a number or 'auto', got {self.threshold!r}")
        elif not isinstance(self.threshold, (int, float)) or not np.isfinite(self.threshold) or self.threshold <= 0:
            raise ExportError(f"threshold must be a positive density or 'auto', got {self.threshold!r}")
        if not 0 <= self.keep_fraction < 1:
            raise ExportError(f"keep_fraction must be in [0, 1), got {self.keep_fraction!r}")

    @classmethod
    def from_kwargs(cls, **options) -> "ExportOptions":
        known = {f.name for f in fields(cls)}
        unknown = set(options) - known
        if unknown:
            raise ExportError(f"unknown export options {sorted(unknown)}; known: {sorted(known)}")
        return cls(**options)


@dataclass
class ExportResult:
    paths: dict[str, Path]  # format ("glb", "obj_zip") -> file written
    vertices: int
    faces: int
    threshold: float
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage

    @property
    def path(self) -> Path:
        """The file written (the GLB when both were asked for)."""
        return next(iter(self.paths.values()))

    @property
    def total_seconds(self) -> float:
        return sum(self.timings.values())


class _Timer:
    def __init__(self):
        self.timings: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = now - self._last
        self._last = now


def extract_surface(source: DensitySource, opts: ExportOptions, timer: _Timer) -> tuple[trimesh.Trimesh, float]:
    """Grid -> marching cubes -> floaters removed -> decimated; returns the mesh and the threshold used."""
    n, bound = opts.resolution, source.bound
    grid = source.density_grid(n).float().cpu().numpy().transpose(2, 1, 0)  # (x, y, z)
    timer.lap("grid")
    voxel = 2 * bound / n
    level = auto_threshold(grid, voxel) if opts.threshold == "auto" else float(opts.threshold)
    lo, hi = float(grid.min()), float(grid.max())
    if not lo < level < hi:
        raise ExportError(
            f"the density never crosses the threshold {level:.4g}: it ranges from {lo:.4g} to {hi:.4g} on the "
            f"{n}^3 grid, so there is no surface to export. "
            + (f"Try a threshold between them (e.g. {0.5 * hi:.3g}) or 'auto'." if hi > 0 else "The object is empty.")
        )
    # Pad with empty cells so that objects touching the box still give closed surfaces.
    padded = np.pad(grid, 1, mode="constant", constant_values=min(lo, 0.0))
    verts, faces, _, _ = marching_cubes(padded, level=level, spacing=(voxel, voxel, voxel))
    verts = verts - bound + voxel / 2 - voxel  # cell centres start at -bound + voxel/2; minus the pad
    faces = faces[:, ::-1]  # skimage winds these clockwise seen from outside; glTF wants counter-clockwise
    timer.lap("marching_cubes")
    mesh = trimesh.Trimesh(verts, faces, process=False)
    labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(mesh.faces))
    sizes = np.bincount(labels)
    keep = sizes[labels] >= opts.keep_fraction * sizes.max()
    mesh.update_faces(keep)
    mesh.remove_unreferenced_vertices()
    timer.lap("cleanup")
    if len(mesh.faces) > opts.target_faces:
        mesh = mesh.simplify_quadric_decimation(face_count=opts.target_faces)
    timer.lap("decimate")
    return mesh, level


def rasterize_uv(uv: np.ndarray, faces: np.ndarray, size: int):
    """Which triangle covers each texel centre of a size^2 texture, and where: (face (T, T), -1 if none;
    barycentrics (T, T, 3)). Texel (row r, column c) has its centre at uv ((c + .5)/T, 1 - (r + .5)/T)."""
    xy = np.stack([uv[:, 0] * size - 0.5, (1 - uv[:, 1]) * size - 0.5], axis=1)  # (column, row) of each vertex
    tri = xy[faces]  # (F, 3, 2)
    x0 = np.ceil(tri[..., 0].min(1)).astype(np.int64).clip(0, size - 1)
    x1 = np.floor(tri[..., 0].max(1)).astype(np.int64).clip(0, size - 1)
    y0 = np.ceil(tri[..., 1].min(1)).astype(np.int64).clip(0, size - 1)
    y1 = np.floor(tri[..., 1].max(1)).astype(np.int64).clip(0, size - 1)
    w, h = np.maximum(x1 - x0 + 1, 0), np.maximum(y1 - y0 + 1, 0)
    counts = w * h
    owner = np.repeat(np.arange(len(faces)), counts)  # one row per candidate texel in each triangle's box
    local = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    px = x0[owner] + local % w[owner]
    py = y0[owner] + local // w[owner]
    a, b, c = tri[owner, 0], tri[owner, 1], tri[owner, 2]
    det = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1])
    det = np.where(np.abs(det) < 1e-12, np.nan, det)
    l1 = ((px - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (py - a[:, 1])) / det
    l2 = ((b[:, 0] - a[:, 0]) * (py - a[:, 1]) - (px - a[:, 0]) * (b[:, 1] - a[:, 1])) / det
    bary = np.stack([1 - l1 - l2, l1, l2], axis=1)
    inside = np.all(bary >= -1e-6, axis=1)
    face_map = np.full((size, size), -1, dtype=np.int64)
    bary_map = np.zeros((size, size, 3), dtype=np.float64)
    face_map[py[inside], px[inside]] = owner[inside]
    bary_map[py[inside], px[inside]] = bary[inside]
    return face_map, bary_map


def pad_seams(texture: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """Give every empty texel the colour of the nearest filled one, so bilinear filtering and mip-maps
    never read an unfilled texel across a chart's edge."""
    if filled.all() or not filled.any():
        return texture
    _, (rows, cols) = distance_transform_edt(~filled, return_indices=True)
    return texture[rows, cols]


def _surface_albedo(source: DensitySource, points: np.ndarray, normals: np.ndarray, inset: float) -> np.ndarray:
    """Linear albedo a little inside the surface, where the field's colour belongs to the object (a model whose
    albedo is in display space, a converted official one, is converted to linear: glTF's colours are linear)."""
    query = torch.as_tensor(points - inset * normals, dtype=torch.float32)
    albedo = source.albedo(query).float().cpu().numpy().clip(0, 1)
    return srgb_to_linear(albedo) if getattr(source, "albedo_space", "linear") == "display" else albedo


def build_textured_mesh(source: DensitySource, opts: ExportOptions, timer: _Timer):
    mesh, level = extract_surface(source, opts, timer)
    if len(mesh.faces) == 0:
        raise ExportError("the surface has no triangles left after removing floaters; lower keep_fraction")
    normals = mesh.vertex_normals.copy()
    inset = 0.5 * 2 * source.bound / opts.resolution  # half a grid cell
    if opts.vertex_colors:
        albedo = _surface_albedo(source, mesh.vertices, normals, inset)
        rgba = np.concatenate([albedo, np.ones((len(albedo), 1))], axis=1)
        colored = trimesh.Trimesh(mesh.vertices, mesh.faces, vertex_normals=normals, process=False,
                                  vertex_colors=(rgba * 255 + 0.5).astype(np.uint8))  # COLOR_0 is linear in glTF
        timer.lap("bake")
        return colored, level
    atlas = xatlas.Atlas()
    atlas.add_mesh(mesh.vertices.astype(np.float32), mesh.faces.astype(np.uint32), normals.astype(np.float32))
    pack = xatlas.PackOptions()
    pack.resolution = opts.texture_size
    pack.padding = 4  # texels between charts: bilinear reads at a chart edge never reach a neighbouring chart
    atlas.generate(pack_options=pack)
    vmapping, indices, uvs = atlas[0]
    verts, vnormals = mesh.vertices[vmapping], normals[vmapping]  # seams split vertices; normals stay smooth
    timer.lap("uv")
    size = opts.texture_size
    face_map, bary = rasterize_uv(uvs, indices.astype(np.int64), size)
    filled = face_map >= 0
    corners = indices[face_map[filled]]  # (K, 3)
    w = bary[filled][..., None]
    points = (verts[corners] * w).sum(axis=1)
    nrm = (vnormals[corners] * w).sum(axis=1)
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True).clip(1e-12)
    texture = np.zeros((size, size, 3), dtype=np.float32)
    texture[filled] = linear_to_srgb(_surface_albedo(source, points, nrm, inset))
    texture = pad_seams(texture, filled)
    image = Image.fromarray((texture * 255 + 0.5).astype(np.uint8), mode="RGB")
    material = trimesh.visual.material.PBRMaterial(
        name="albedo", baseColorTexture=image, metallicFactor=0.0, roughnessFactor=1.0
    )
    visual = trimesh.visual.TextureVisuals(uv=uvs, material=material)
    textured = trimesh.Trimesh(verts, indices, vertex_normals=vnormals, visual=visual, process=False)
    timer.lap("bake")
    return textured, level


def _write(path: Path, data: bytes, suffix: str) -> None:
    try:
        with atomic_path(path, suffix=suffix) as tmp:
            tmp.write_bytes(data)
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}; choose a writable file path") from exc


def export_files(source: DensitySource, glb=None, obj_zip=None, **options) -> ExportResult:
    """Build the mesh once and write a GLB and/or an OBJ zip (model.obj, model.mtl, texture PNG), atomically.

    Options: see ``ExportOptions``.
    """
    if glb is None and obj_zip is None:
        raise ExportError("name at least one file to write: glb=... or obj_zip=...")
    opts = ExportOptions.from_kwargs(**options)
    timer = _Timer()
    mesh, level = build_textured_mesh(source, opts, timer)
    paths = {}
    if glb is not None:
        paths["glb"] = Path(glb)
        _write(paths["glb"], trimesh.exchange.gltf.export_glb(mesh.scene(), include_normals=True), ".glb")
        timer.lap("write")
    if obj_zip is not None:
        paths["obj_zip"] = Path(obj_zip)
        text, files = trimesh.exchange.obj.export_obj(
            mesh, include_normals=True, include_texture=True, return_texture=True, mtl_name="model.mtl"
        )
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("model.obj", text)
            for name, data in files.items():
                zf.writestr(name, data)
        _write(paths["obj_zip"], buffer.getvalue(), ".zip")
        timer.lap("write obj zip")
    return ExportResult(paths, len(mesh.vertices), len(mesh.faces), level, timer.timings)


def export_glb(source: DensitySource, path, **options) -> ExportResult:
    """Write a GLB of the object to ``path`` (atomically). Options: see ``ExportOptions``."""
    return export_files(source, glb=path, **options)


def export_obj_zip(source: DensitySource, path, **options) -> ExportResult:
    """Write a zip holding model.obj, model.mtl and the texture PNG (atomically). Same options as the GLB."""
    return export_files(source, obj_zip=path, **options)
