"""Ground-truth renders of toy-world scenes by sphere tracing their signed distance functions.

Same cameras, shading modes and light model as training (instant3d.render.cameras, training.sampling), so that the
priors learn the images that SDS will show them. Output is linear RGB in [0, 1] with the background composited,
plus the coverage mask; 2x supersampling (box filter) gives anti-aliased edges.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from instant3d.render.cameras import Cameras, generate_rays, ray_box_intersect
from instant3d.render.shading import lambert_factor

from .scenes import Scene


def scene_normals(scene: Scene, points: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Unit outward normals of the scene's surface at (N, 3) points: the SDF's gradient, by central differences."""
    offsets = torch.eye(3, dtype=points.dtype) * eps
    plus = torch.stack([scene.sdf(points + o) for o in offsets], dim=-1)
    minus = torch.stack([scene.sdf(points - o) for o in offsets], dim=-1)
    return F.normalize(plus - minus, dim=-1)


@torch.no_grad()
def render_scene(scene: Scene, cameras: Cameras, size: int, background: torch.Tensor, shading: str = "albedo",
                 light_dirs: torch.Tensor | None = None, ambient: float = 0.1, supersample: int = 2,
                 max_steps: int = 96, bound: float = 1.0, return_depth: bool = False, return_detail: bool = False):
    """Images (B, size, size, 3) linear and coverage (B, size, size) of ``scene`` from each camera
    [and, with ``return_depth``, the mean distance along the ray to the surface over the pixel's hit sub-pixels
    (B, size, size), 0 where nothing is hit] [and, with ``return_detail``, the pixel's coverage by the scene's small
    named parts (nose, beak, door, eyes) or by any surface in line with one along z, (B, size, size)].

    ``background`` (B, 3) linear; ``shading`` as the training renderer: "albedo", "lambertian" (albedo x
    (ambient + (1 - ambient) max(n.l, 0))) or "textureless" (white, shaded); ``light_dirs`` (B, 3).
    """
    b, hi = len(cameras), size * supersample
    origins, dirs = generate_rays(cameras, hi)
    origins, dirs = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    t, t_far, hit_box = ray_box_intersect(origins, dirs, -bound, bound)
    active = hit_box.clone()
    hit = torch.zeros_like(active)
    for _ in range(max_steps):
        idx = active.nonzero().squeeze(-1)
        if idx.numel() == 0:
            break
        d = scene.sdf(origins[idx] + dirs[idx] * t[idx, None])
        t[idx] += d
        reached = d < 1e-4
        hit[idx[reached]] = True
        done = reached | (t[idx] > t_far[idx])
        active[idx[done]] = False
    points = origins + dirs * t[:, None]
    colour = torch.zeros(origins.shape[0], 3)
    detail = torch.zeros(origins.shape[0])
    idx = hit.nonzero().squeeze(-1)
    named = torch.tensor([bool(part.name) for part in scene.parts])
    if idx.numel() and return_detail and named.any():  # the part whose surface is nearest, as Scene.albedo picks
        hits = points[idx]
        nearest = torch.stack([part.distance(hits) for part in scene.parts], dim=-1).argmin(dim=-1)
        # ... or any surface in front of or behind a part (the same x, y): the triplane's XY plane gives every
        # (x, y, z) the same features, so what a front part teaches there must be unlearnt as hard at the back
        detail[idx] = (named[nearest] | scene.in_line_with_parts(hits, bound)).float()
    if idx.numel():
        albedo = scene.albedo(points[idx])
        if shading == "albedo":
            colour[idx] = albedo
        else:
            light = light_dirs.repeat_interleave(hi * hi, dim=0)[idx]
            lam = lambert_factor(scene_normals(scene, points[idx]), light, ambient)
            colour[idx] = albedo * lam if shading == "lambertian" else lam.expand(-1, 3)
    mask = hit.float().view(b, hi, hi, 1)
    image = colour.view(b, hi, hi, 3) * mask + background.view(b, 1, 1, 3) * (1 - mask)
    depth = torch.where(hit, t, torch.zeros_like(t)).view(b, hi, hi, 1)
    detail = detail.view(b, hi, hi, 1)
    if supersample > 1:  # box filter down to the requested size
        pool = lambda x: F.avg_pool2d(x.permute(0, 3, 1, 2), supersample).permute(0, 2, 3, 1)  # noqa: E731
        image, depth, mask, detail = pool(image), pool(depth), pool(mask), pool(detail)
    extra = []
    if return_depth:
        extra.append(torch.where(mask > 0, depth / mask.clamp_min(1e-8), depth)[..., 0])
    if return_detail:
        extra.append(detail[..., 0])
    return (image, mask[..., 0], *extra)


def render_prompt(prompt: str, cameras: Cameras, size: int, background: torch.Tensor, shading: str = "albedo",
                  light_dirs: torch.Tensor | None = None, ambient: float = 0.1):
    """The exact scene of a toy-world prompt: (linear image, coverage, depth, coverage by its small named parts and
    the surfaces in line with them along z, at the back),
    the supervised objective's target (registered with the prompt set as its ``ground_truth``)."""
    from .scenes import scene_for_prompt

    return render_scene(scene_for_prompt(prompt), cameras, size, background, shading, light_dirs, ambient,
                        return_depth=True, return_detail=True)
