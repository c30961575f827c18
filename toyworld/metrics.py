"""Quality of generated objects against the toy world's exact ground truth.

- geometry IoU on a 48^3 grid over the box: a generated voxel is occupied when it absorbs at least half the light
  crossing it (1 - exp(-sigma * voxel) >= 1/2, sigma at its centre); a ground-truth voxel when its centre is inside;
- colour accuracy / error at the ground-truth surface (occupied voxels next to empty ones): the generated albedo
  just there "names" the nearest colour of the world's palette; accuracy = the same name as the truth's;
  error = mean absolute sRGB difference;
- Janus rate (front-facing objects only): the generated back view is closer, in an evaluation CLIP's image
  features, to the true front view than to the true back view;
- feature fidelity (front-facing objects only): is each small named part (nose, beak, door, eyes) drawn? Its own
  points outside the body (a 96^3 grid), at least half of them occupied at the IoU's density threshold, with a
  mean albedo nearer the part's colour than the body's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from instant3d.render.cameras import orbit_cameras
from instant3d.render.color import linear_to_srgb

from .render import render_scene
from .scenes import CARROT, BLACK, COLOURS, DOOR, Scene

PALETTE_NAMES = [*COLOURS, "carrot", "black", "door"]
PALETTE = torch.tensor([*COLOURS.values(), CARROT, BLACK, DOOR])


def colour_names(linear_rgb: torch.Tensor) -> torch.Tensor:
    """Index into PALETTE_NAMES of the nearest palette colour (compared in sRGB, as people see them)."""
    return torch.cdist(linear_to_srgb(linear_rgb.clamp(0, 1)), linear_to_srgb(PALETTE)).argmin(dim=-1)


def voxel_centres(resolution: int, bound: float = 1.0) -> torch.Tensor:
    """(G^3, 3) centres in (z, y, x) order, matching ``Instant3DOutput.density_grid``."""
    c = ((torch.arange(resolution) + 0.5) / resolution * 2 - 1) * bound
    zz, yy, xx = torch.meshgrid(c, c, c, indexing="ij")
    return torch.stack([xx, yy, zz], dim=-1).reshape(-1, 3)


IOU_RESOLUTION = 48


def occupied_density(bound: float, resolution: int = IOU_RESOLUTION) -> float:
    """The density from which a voxel of the IoU's grid absorbs at least half the light crossing it."""
    return math.log(2) / (2 * bound / resolution)


def geometry_iou(out, scene: Scene, resolution: int = IOU_RESOLUTION) -> float:
    bound = out.bound
    generated = (out.density_grid(resolution).reshape(-1).cpu() >= occupied_density(bound, resolution))
    truth = scene.occupancy(voxel_centres(resolution, bound))
    union = (generated | truth).sum().item()
    return (generated & truth).sum().item() / union if union else 1.0


def surface_points(scene: Scene, resolution: int = 48, bound: float = 1.0) -> torch.Tensor:
    """Centres of ground-truth occupied voxels that touch an empty one."""
    occ = scene.occupancy(voxel_centres(resolution, bound)).view(1, 1, *(3 * [resolution])).float()
    interior = -F.max_pool3d(-F.pad(occ, (1,) * 6, value=0.0), 3, stride=1)  # erosion
    surface = (occ > 0) & (interior < 1)
    return voxel_centres(resolution, bound)[surface.reshape(-1)]


def colour_scores(out, scene: Scene, resolution: int = 48) -> tuple[float, float]:
    """(accuracy, mean absolute sRGB error) of the generated albedo at the ground-truth surface."""
    points = surface_points(scene, resolution, out.bound)
    if points.shape[0] == 0:
        return 0.0, 1.0
    generated = out.albedo(points).cpu()
    truth = scene.albedo(points)
    accuracy = (colour_names(generated) == colour_names(truth)).float().mean().item()
    error = (linear_to_srgb(generated.clamp(0, 1)) - linear_to_srgb(truth)).abs().mean().item()
    return accuracy, error


def colour_errors_by_name(out, scene: Scene, resolution: int = 48) -> dict[str, tuple[float, int, torch.Tensor]]:
    """Per true palette colour at the ground-truth surface: (summed absolute sRGB error, point count, summed signed
    sRGB error (3,)), so that a bias (white read as lavender: too little green) shows as a signed mean."""
    points = surface_points(scene, resolution, out.bound)
    if points.shape[0] == 0:
        return {}
    generated = linear_to_srgb(out.albedo(points).cpu().clamp(0, 1))
    truth_linear = scene.albedo(points)
    truth = linear_to_srgb(truth_linear)
    names = colour_names(truth_linear)
    result = {}
    for index in names.unique().tolist():
        chosen = names == index
        diff = generated[chosen] - truth[chosen]
        result[PALETTE_NAMES[index]] = (diff.abs().mean(dim=-1).sum().item(), int(chosen.sum()), diff.sum(dim=0))
    return result


def is_janus(out, scene: Scene, clip, size: int = 64, elevation: float = 15.0) -> bool:
    """Does the generated back view look more like the true front than like the true back?"""
    cfg = out.render_config
    cams = orbit_cameras([0.0, 180.0], [elevation, elevation], cfg.camera_radius, cfg.fov_deg)
    white = torch.ones(2, 3)
    truth, _ = render_scene(scene, cams, size, white)
    gen_back = torch.from_numpy(out.render(180.0, elevation, size=size)).float().div(255)
    images = torch.cat([linear_to_srgb(truth), gen_back[None]]).permute(0, 3, 1, 2)
    feats = clip.image_features(images.to(clip.device))
    return bool((feats[2] @ feats[0]) > (feats[2] @ feats[1]))


FEATURES = ("nose", "beak", "door", "eye")


def feature_fidelity(out, scene: Scene, resolution: int = 96) -> dict[str, dict]:
    """{feature name: {"occupancy", "colour_ok", "drawn"}} for each small named part of ``scene`` (module doc).
    The points are the voxel centres of a resolution^3 grid inside the part and outside every unnamed part."""
    bound = out.bound
    points = voxel_centres(resolution, bound)
    body = [part for part in scene.parts if not part.name]
    body_distance = torch.stack([part.distance(points) for part in body], dim=-1)
    result = {}
    for name in FEATURES:
        parts = [part for part in scene.parts if part.name == name]
        if not parts:
            continue
        inside = torch.stack([part.distance(points) for part in parts], dim=-1).amin(dim=-1) < 0
        mask = inside & (body_distance.amin(dim=-1) > 0)
        if not bool(mask.any()):
            continue
        where = points[mask]  # a finer grid than the IoU's (the parts are small), with the IoU's density threshold
        occupancy = (out.density(where).cpu() >= occupied_density(bound)).float().mean().item()
        albedo = linear_to_srgb(out.albedo(where).cpu().clamp(0, 1).mean(dim=0))
        nearest_body = body[int(body_distance[mask].mean(dim=0).argmin())]  # the part it sits on
        to_feature = (albedo - linear_to_srgb(torch.tensor(parts[0].colour))).norm().item()
        to_body = (albedo - linear_to_srgb(torch.tensor(nearest_body.colour))).norm().item()
        result[name] = {"occupancy": occupancy, "colour_ok": to_feature < to_body,
                        "drawn": occupancy >= 0.5 and to_feature < to_body}
    return result
