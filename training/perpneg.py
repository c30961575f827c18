"""View-dependent prompts, Perp-Neg and the adaptive Perp-Neg severity (the paper, §3.4).

Conventions (docs/DESIGN.md §3): azimuth 0 deg = front; azimuths are wrapped to (-180, 180]. The positive
embedding blends front/side/back by azimuth and the two negatives get threestudio's weight functions
f(a, b, c; r) = a * exp(-b * r) + c. Adaptive Perp-Neg (Instant3D, Eq. 11-12) scales those weights by
w_min + C * dw, where the severity C compares this view's CLIP image features with the same prompt's last view.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

VIEW_SUFFIXES = {"front": ", front view", "side": ", side view", "back": ", back view", "overhead": ", overhead view"}
OVERHEAD_ELEVATION = 60.0  # above this the overhead prompt is used, with no negatives

# threestudio's defaults (a, b, c): front<->side and side<->back negatives
F_FS = (4.0, 0.5, -2.426)
F_SF = (4.0, 0.5, -2.426)
F_SB = (1.0, 0.5, -0.606)
F_FSB = (1.0, 0.5, 0.967)


def weight_fn(params, r):
    a, b, c = params
    return a * torch.exp(-b * r) + c


def wrap_azimuth(azimuth: torch.Tensor) -> torch.Tensor:
    """Degrees to (-180, 180]."""
    return 180.0 - torch.remainder(180.0 - azimuth, 360.0)


@dataclass
class ViewBlend:
    """Per image: how to build the positive embedding and the two negatives from the four view embeddings.

    ``positive`` (B, 4) and ``negatives`` (B, 2, 4) are weights over (front, side, back, overhead) embeddings;
    ``negative_weights`` (B, 2) are the Perp-Neg weights (0 for overhead views).
    """

    positive: torch.Tensor
    negatives: torch.Tensor
    negative_weights: torch.Tensor


def view_blend(azimuth, elevation) -> ViewBlend:
    """threestudio's view interpolation and Perp-Neg weights, with azimuth 0 = front."""
    az = wrap_azimuth(torch.as_tensor(azimuth, dtype=torch.float32).reshape(-1)).abs()
    el = torch.as_tensor(elevation, dtype=torch.float32).reshape(-1).expand_as(az)
    b = az.shape[0]
    positive = torch.zeros(b, 4)
    negatives = torch.zeros(b, 2, 4)
    weights = torch.zeros(b, 2)
    front_side = az < 90
    r = torch.where(front_side, 1 - az / 90, 2 - az / 90)  # 1 = front (or side), 0 = side (or back)
    # front <-> side: positive r*front + (1-r)*side; negatives front (f_fs(r)) and side (f_sf(1-r))
    positive[:, 0] = torch.where(front_side, r, 0.0)
    positive[:, 1] = torch.where(front_side, 1 - r, r)
    positive[:, 2] = torch.where(front_side, 0.0, 1 - r)
    negatives[:, 0, 0] = torch.where(front_side, 1.0, 0.0)  # first negative: front | side
    negatives[:, 0, 1] = torch.where(front_side, 0.0, 1.0)
    negatives[:, 1, 1] = torch.where(front_side, 1.0, 0.0)  # second negative: side | front
    negatives[:, 1, 0] = torch.where(front_side, 0.0, 1.0)
    weights[:, 0] = torch.where(front_side, weight_fn(F_FS, r), weight_fn(F_SB, r))
    weights[:, 1] = torch.where(front_side, weight_fn(F_SF, 1 - r), weight_fn(F_FSB, r))
    overhead = el > OVERHEAD_ELEVATION
    positive[overhead] = torch.tensor([0.0, 0.0, 0.0, 1.0])
    weights[overhead] = 0.0
    return ViewBlend(positive, negatives, weights)


def perpendicular_component(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The part of x orthogonal to y, per sample over all other dimensions: x - <x,y>/max(<y,y>, 1e-6) * y."""
    dims = tuple(range(1, x.dim()))
    dot = (x * y).sum(dim=dims, keepdim=True)
    norm = (y * y).sum(dim=dims, keepdim=True).clamp_min(1e-6)
    return x - dot / norm * y


def perp_neg_guidance(eps_uncond, eps_pos, eps_negs, neg_weights, scale: float) -> torch.Tensor:
    """eps = eps_u + s * (e_pos - sum_k w_k * perp(e_neg_k, e_pos)), e = eps_cond - eps_u (threestudio: the
    negative weights are multiplied by the guidance scale too). eps_negs: (B, K, ...), neg_weights: (B, K)."""
    e_pos = eps_pos - eps_uncond
    total = torch.zeros_like(e_pos)
    for k in range(eps_negs.shape[1]):
        e_neg = eps_negs[:, k] - eps_uncond
        w = neg_weights[:, k].view(-1, *([1] * (e_pos.dim() - 1)))
        total = total + w * perpendicular_component(e_neg, e_pos)
    return eps_uncond + scale * (e_pos - total)


def view_direction(azimuth, elevation) -> torch.Tensor:
    """Unit vectors (B, 3) from the object towards cameras at these angles (degrees)."""
    az = torch.deg2rad(torch.as_tensor(azimuth, dtype=torch.float32).reshape(-1))
    el = torch.deg2rad(torch.as_tensor(elevation, dtype=torch.float32).reshape(-1))
    return torch.stack([el.cos() * az.sin(), el.sin(), el.cos() * az.cos()], dim=-1)


def severity(features, views, previous_features, previous_views) -> torch.Tensor:
    """Janus severity C in [0, 1] (Eq. 12 with n = 1): (1/4) (1 - cos(v - v')) (1 + <phi, phi'>).

    ``views`` are (azimuth, elevation) pairs (B, 2) in degrees; cos(v - v') is the great-circle cosine between
    the two camera directions. High image similarity between far-apart views means a Janus object.
    """
    d = view_direction(views[:, 0], views[:, 1])
    d_prev = view_direction(previous_views[:, 0], previous_views[:, 1])
    view_cos = (d * d_prev).sum(-1).clamp(-1, 1)
    image_cos = F.cosine_similarity(features, previous_features, dim=-1).clamp(-1, 1)
    return (0.25 * (1 - view_cos) * (1 + image_cos)).clamp(0, 1)


class SeverityCache:
    """Per training prompt: the CLIP image features and view of its last rendering (the paper's cheap version)."""

    def __init__(self):
        self._store: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, prompts: list[str], features: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """C for each prompt against its previous visit (0 on a first visit); then remember this visit."""
        features, views = features.detach().float().cpu(), views.detach().float().cpu()
        c = torch.zeros(len(prompts))
        for i, prompt in enumerate(prompts):
            if prompt in self._store:
                prev_f, prev_v = self._store[prompt]
                c[i] = severity(features[i : i + 1], views[i : i + 1], prev_f[None], prev_v[None])[0]
            self._store[prompt] = (features[i], views[i])
        return c

    def state(self) -> tuple[list[str], dict[str, torch.Tensor]]:
        """(prompt order, tensors) for saving with a checkpoint."""
        keys = sorted(self._store)
        if not keys:
            return [], {}
        return keys, {
            "features": torch.stack([self._store[k][0] for k in keys]),
            "views": torch.stack([self._store[k][1] for k in keys]),
        }

    def load(self, keys: list[str], tensors: dict[str, torch.Tensor]) -> None:
        self._store = {k: (tensors["features"][i], tensors["views"][i]) for i, k in enumerate(keys)}

    def __len__(self) -> int:
        return len(self._store)


def adaptive_scale(c: torch.Tensor, w_min: float, w_delta: float) -> torch.Tensor:
    """w_neg factor = w_min + C * dw (Eq. 11), applied to threestudio's azimuth weights."""
    return w_min + c * w_delta

