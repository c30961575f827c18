"""The reference volume renderer: stratified + importance samples, composited with nerfacc's dense API.

This is the renderer training differentiates through and the quality reference for the fast preview.
On CPU only nerfacc's dense (n_rays, n_samples) functions work (docs/DESIGN.md §5); nothing here
passes ``ray_indices`` or ``packed_info`` or uses the estimators, so the same code runs on CPU and CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass

import nerfacc
import torch

from instant3d.render.cameras import Cameras, generate_rays, ray_box_intersect
from instant3d.models.field import TriplaneField
from instant3d.render.shading import lambert_factor, per_camera_lights


@dataclass
class RenderResult:
    color: torch.Tensor  # (..., 3), background composited
    opacity: torch.Tensor  # (...)
    depth: torch.Tensor  # (...), expected depth of the visible surface (meaningless where opacity ~ 0)
    depth_variance: torch.Tensor | None = None  # (...), spread of where the ray's light is absorbed (fog: large);
    # only when asked for (``with_depth_variance``: training's regulariser)


def stratified_samples(t_near, t_far, n: int, perturb: bool = False, generator=None) -> torch.Tensor:
    """n samples per ray, one in each of n equal strata of [t_near, t_far]: (R,) -> (R, n)."""
    offsets = torch.full((*t_near.shape, n), 0.5, device=t_near.device)
    if perturb:
        offsets = torch.rand(offsets.shape, generator=generator, device="cpu").to(t_near.device)
    u = (torch.arange(n, device=t_near.device) + offsets) / n
    return t_near[..., None] + (t_far - t_near)[..., None] * u


def intervals_from_samples(t: torch.Tensor, t_near: torch.Tensor, t_far: torch.Tensor):
    """Sorted sample positions (R, S) -> contiguous intervals (t_starts, t_ends) split halfway between samples."""
    mids = 0.5 * (t[..., 1:] + t[..., :-1])
    edges = torch.cat([t_near[..., None], mids, t_far[..., None]], dim=-1)
    return edges[..., :-1], edges[..., 1:]


def importance_samples(t_starts, t_ends, weights, n: int, perturb: bool = False, generator=None) -> torch.Tensor:
    """n samples per ray drawn by inverse CDF from piecewise-constant weights over contiguous intervals.

    Weights are smoothed as in the official code (max-pool 2, average-pool 2, + 0.01) so that a thin
    surface still gets neighbours and empty rays fall back to uniform sampling.
    """
    padded = torch.cat([weights[..., :1], weights, weights[..., -1:]], dim=-1)
    peak = torch.maximum(padded[..., :-1], padded[..., 1:])
    w = 0.5 * (peak[..., :-1] + peak[..., 1:]) + 0.01
    cdf = torch.cumsum(w / w.sum(dim=-1, keepdim=True), dim=-1)
    cdf = torch.cat([torch.zeros_like(cdf[..., :1]), cdf], dim=-1).contiguous()  # (R, S+1)
    edges = torch.cat([t_starts, t_ends[..., -1:]], dim=-1)
    if perturb:
        u = torch.rand((*cdf.shape[:-1], n), generator=generator, device="cpu").to(cdf.device)
        u = (torch.arange(n, device=cdf.device) + u) / n
    else:
        u = ((torch.arange(n, device=cdf.device) + 0.5) / n).expand(*cdf.shape[:-1], n)
    u = u.contiguous()
    idx = torch.searchsorted(cdf, u, right=True).clamp(1, cdf.shape[-1] - 1)
    c0, c1 = cdf.gather(-1, idx - 1), cdf.gather(-1, idx)
    e0, e1 = edges.gather(-1, idx - 1), edges.gather(-1, idx)
    frac = ((u - c0) / (c1 - c0).clamp_min(1e-8)).clamp(0, 1)
    return e0 + frac * (e1 - e0)


def render_rays(
    field: TriplaneField,
    planes: torch.Tensor,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    *,
    num_samples: int = 64,
    num_importance: int = 64,
    background=(1.0, 1.0, 1.0),
    perturb: bool = False,
    generator: torch.Generator | None = None,
    alpha: float | None = None,
    shading: str = "albedo",
    light_dirs: torch.Tensor | None = None,
    ambient: float = 0.1,
    with_depth_variance: bool = False,
) -> RenderResult:
    """Render B x N rays through B triplanes: planes (B, 3, C, R, R), origins/dirs (B, N, 3) -> (B, N, ...).

    ``background`` is a colour (3,) or per-image colours (B, 3) (training uses a random one per image).
    ``shading``: "albedo" (colour as is), "lambertian" (albedo x (ambient + (1 - ambient) max(n.l, 0))) or
    "textureless" (white, shaded); the last two need unit ``light_dirs`` (B, 3), or (B, N, 3) one per ray, and
    cost 6 extra field queries a sample for the normals (DreamFusion's shading, as the paper does).
    Differentiable with respect to the planes and the field's MLP.
    """
    if shading not in ("albedo", "lambertian", "textureless"):
        raise ValueError(f"shading must be 'albedo', 'lambertian' or 'textureless', got {shading!r}")
    if shading != "albedo" and light_dirs is None:
        raise ValueError(f"{shading} shading needs light_dirs")
    b, n, _ = origins.shape
    bound = field.cfg.bound
    t_near, t_far, _ = ray_box_intersect(origins, dirs, -bound, bound)  # (B, N)

    def query(t: torch.Tensor, shade: bool = False):
        points = (origins[..., None, :] + dirs[..., None, :] * t[..., None]).reshape(b, -1, 3)  # (B, N*S, 3)
        sigma, rgb = field(planes, points, alpha=alpha)
        if shade and shading != "albedo":
            light = light_dirs if light_dirs.dim() == 3 else light_dirs[:, None, :]
            if light.shape[1] > 1:  # one light per ray: repeat it for the ray's samples
                light = light.repeat_interleave(points.shape[1] // n, dim=1)
            lam = lambert_factor(field.normals(planes, points), light, ambient)
            rgb = rgb * lam if shading == "lambertian" else lam.expand_as(rgb)
        return sigma.view(b, n, -1), rgb.view(b, n, -1, 3)

    t = stratified_samples(t_near, t_far, num_samples, perturb, generator)
    if num_importance > 0:
        with torch.no_grad():
            sigma, _ = query(t)
            starts, ends = intervals_from_samples(t, t_near, t_far)
            weights, _, _ = nerfacc.render_weight_from_density(
                starts.reshape(b * n, -1), ends.reshape(b * n, -1), sigma.reshape(b * n, -1)
            )
            fine = importance_samples(
                starts.reshape(b * n, -1), ends.reshape(b * n, -1), weights, num_importance, perturb, generator
            )
        t, _ = torch.sort(torch.cat([t, fine.view(b, n, -1)], dim=-1), dim=-1)
    starts, ends = intervals_from_samples(t, t_near, t_far)
    sigma, rgb = query(t, shade=True)

    bg = torch.as_tensor(background, dtype=rgb.dtype, device=rgb.device)
    bg = bg.view(-1, 1, 3).expand(b, n, 3).reshape(b * n, 3) if bg.dim() == 2 else bg
    color, opacity, depth, extras = nerfacc.rendering(
        starts.reshape(b * n, -1),
        ends.reshape(b * n, -1),
        rgb_sigma_fn=lambda *_: (rgb.reshape(b * n, -1, 3), sigma.reshape(b * n, -1)),
        render_bkgd=bg,
    )
    variance = None
    if with_depth_variance:
        # sum_i w_i (t_i - depth)^2 (nerfacc's depth is already the weighted mean): Magic3D's z-variance, small for a
        # thin surface, large for a fog that absorbs the same light over a long stretch of the ray
        mids = ((starts + ends) / 2).reshape(b * n, -1)
        variance = (extras["weights"] * (mids - depth.view(b * n, 1)) ** 2).sum(-1).view(b, n)
    return RenderResult(color.view(b, n, 3), opacity.view(b, n), depth.view(b, n), variance)


@torch.no_grad()
def render_views(
    field: TriplaneField,
    planes: torch.Tensor,
    cameras: Cameras,
    size: int,
    *,
    chunk: int = 4096,
    light_dirs: torch.Tensor | None = None,
    **options,
) -> RenderResult:
    """Full-quality images of one triplane from each camera, in ray chunks: -> (B, H, W, ...).

    ``light_dirs`` (B, 3) one light per camera, or (1, 3) one for all, for the shaded modes of ``render_rays``."""
    if planes.dim() == 4:
        planes = planes[None]
    origins, dirs = generate_rays(cameras, size)
    views = len(cameras)
    origins, dirs = origins.reshape(1, -1, 3), dirs.reshape(1, -1, 3)
    if light_dirs is not None:  # each ray carries its camera's light
        light_dirs = per_camera_lights(light_dirs, views).to(origins).repeat_interleave(size * size, dim=0)[None]
    parts = [
        render_rays(field, planes, origins[:, i : i + chunk], dirs[:, i : i + chunk],
                    light_dirs=None if light_dirs is None else light_dirs[:, i : i + chunk], **options)
        for i in range(0, origins.shape[1], chunk)
    ]
    shape = (views, size, size)
    return RenderResult(
        color=torch.cat([p.color for p in parts], dim=1).view(*shape, 3),
        opacity=torch.cat([p.opacity for p in parts], dim=1).view(shape),
        depth=torch.cat([p.depth for p in parts], dim=1).view(shape),
    )
