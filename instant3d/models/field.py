"""The radiance field read from a triplane: plane sampling, the MLP, density and albedo activations.

Planes are stored as (B, 3, C, R, R) in the order XY, XZ, ZY; plane P's first sampling coordinate runs
along its width and the second along its height (``grid_sample`` convention), both scaled by the bound.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from instant3d.config import FieldConfig
from instant3d.models.generator import EqualLinear

# For each plane, the world axes that map to grid_sample's (width, height) coordinates.
PLANE_AXES = ((0, 1), (0, 2), (2, 1))  # XY, XZ, ZY


def scaled_sigmoid(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """(1/alpha) * sigmoid(alpha * x): slope 1/4 at 0 for every alpha, range (0, 1/alpha) (paper Eq. 8-9)."""
    if not 0 < alpha <= 1:
        raise ValueError(f"scaled-sigmoid alpha must be in (0, 1], got {alpha}")
    return torch.sigmoid(alpha * x) / alpha


class TriplaneField(nn.Module):
    """Density and albedo at world points from a triplane; holds the MLP weights (32 -> 64 -> 4 in the paper)."""

    def __init__(self, cfg: FieldConfig, plane_channels: int):
        super().__init__()
        self.cfg = cfg
        self.plane_channels = plane_channels
        in_dim = plane_channels * (3 if cfg.aggregation == "concat" else 1)
        dims = (in_dim, *cfg.hidden_dims, 4)
        self.layers = nn.ModuleList(EqualLinear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        # The hidden Softplus outputs are all positive, so random albedo rows would give every object of a fresh
        # model one shared colour cast (green with seed 0), which SDS then takes thousands of steps to undo;
        # zero rows start every object neutral grey and still learn (their gradient is the hidden activation).
        with torch.no_grad():
            self.layers[-1].weight[1:].zero_()

    # -- pointwise queries ----------------------------------------------------------------------------
    def plane_features(self, planes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Bilinear features of each plane: planes (B, 3, C, R, R), points (B, N, 3) -> (B, N, 3, C)."""
        b, _, c, r, _ = planes.shape
        coords = torch.stack([points[..., list(axes)] for axes in PLANE_AXES], dim=1) / self.cfg.bound
        feats = F.grid_sample(
            planes.reshape(b * 3, c, r, r),
            coords.reshape(b * 3, 1, -1, 2),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )  # (B*3, C, 1, N)
        return feats.view(b, 3, c, -1).permute(0, 3, 1, 2)

    def aggregate(self, feats: torch.Tensor) -> torch.Tensor:
        return feats.mean(dim=-2) if self.cfg.aggregation == "mean" else feats.flatten(-2)

    def mlp(self, x: torch.Tensor, skip_first: bool = False) -> torch.Tensor:
        layers = self.layers[1:] if skip_first else self.layers
        if skip_first:
            x = F.softplus(x)
        for i, layer in enumerate(layers):
            x = layer(x)
            if i < len(layers) - 1:
                x = F.softplus(x)
        return x

    def blob(self, points: torch.Tensor) -> torch.Tensor:
        """Density prior g(x) = blob_density * (1 - |x| / blob_radius): keeps SDS from starting empty."""
        return self.cfg.blob_density * (1.0 - points.norm(dim=-1) / self.cfg.blob_radius)

    def activate(self, raw: torch.Tensor, points: torch.Tensor, alpha: float | None = None):
        """raw MLP output (..., 4) -> (density (...), albedo (..., 3))."""
        sigma = F.softplus(raw[..., 0] + self.blob(points) - self.cfg.density_shift)
        if self.cfg.albedo_activation == "padded_sigmoid":  # no alpha: the official model was trained without one
            albedo = torch.sigmoid(raw[..., 1:]) * 1.002 - 0.001
        else:
            albedo = scaled_sigmoid(raw[..., 1:], self.cfg.albedo_alpha if alpha is None else alpha)
        return sigma, albedo

    def density_logit(self, planes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """raw + blob - shift (density before softplus): the smooth function normals are taken from."""
        raw = self.mlp(self.aggregate(self.plane_features(planes, points)))
        return raw[..., 0] + self.blob(points) - self.cfg.density_shift

    def normals(self, planes: torch.Tensor, points: torch.Tensor, eps: float = 0.01) -> torch.Tensor:
        """Unit normals -grad(density logit) by central differences (6 extra queries a point), (B, N, 3)."""
        offsets = torch.eye(3, device=points.device, dtype=points.dtype) * eps
        shifted = torch.cat([points[:, :, None] + offsets, points[:, :, None] - offsets], dim=2)  # (B, N, 6, 3)
        logits = self.density_logit(planes, shifted.reshape(points.shape[0], -1, 3)).view(*points.shape[:2], 6)
        grad = (logits[..., :3] - logits[..., 3:]) / (2 * eps)
        return F.normalize(-grad, dim=-1)

    def forward(self, planes: torch.Tensor, points: torch.Tensor, alpha: float | None = None):
        """planes (B, 3, C, R, R), points (B, N, 3) -> density (B, N), albedo (B, N, 3)."""
        raw = self.mlp(self.aggregate(self.plane_features(planes, points)))
        return self.activate(raw, points, alpha)

    # -- baking onto a regular grid -------------------------------------------------------------------
    @torch.no_grad()
    def bake(self, planes: torch.Tensor, resolution: int, alpha: float | None = None, slab: int = 16):
        """(density, albedo) at the cell centres of a resolution^3 grid over the box -> (4, G, G, G) as (c, z, y, x).

        Exact, not approximate: grid points project onto a regular 2-D grid of each plane and the first MLP
        layer is linear, so its pre-activation is a sum of three per-plane terms broadcast over the third
        axis. This costs G^2 plane lookups instead of G^3 and one small matmul per remaining layer.
        """
        if planes.dim() == 5:
            if planes.shape[0] != 1:
                raise ValueError("bake takes one triplane at a time")
            planes = planes[0]
        g, bound = resolution, self.cfg.bound
        coords = (torch.arange(g, device=planes.device, dtype=planes.dtype) + 0.5) / g * 2 - 1  # normalised
        v, u = torch.meshgrid(coords, coords, indexing="ij")  # u along width, v along height
        grid = torch.stack([u, v], dim=-1)[None]  # (1, G, G, 2)
        first = self.layers[0]
        weight, c = first.effective_weight(), self.plane_channels
        pre = []  # per-plane first-layer pre-activations, each (G_height, G_width, H)
        for p in range(3):
            feats = F.grid_sample(planes[p : p + 1], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            w = weight / 3 if self.cfg.aggregation == "mean" else weight[:, p * c : (p + 1) * c]
            pre.append(feats[0].permute(1, 2, 0) @ w.T)
        a_xy, a_xz, a_zy = pre  # a_xy[y, x], a_xz[z, x], a_zy[y, z]
        world = coords * bound
        out = torch.empty(4, g, g, g, device=planes.device, dtype=planes.dtype)
        for z0 in range(0, g, slab):
            z1 = min(z0 + slab, g)
            h = a_xy[None] + a_xz[z0:z1, None] + a_zy.transpose(0, 1)[z0:z1, :, None] + first.bias  # (z, y, x, H)
            raw = self.mlp(h, skip_first=True)
            zz, yy, xx = torch.meshgrid(world[z0:z1], world, world, indexing="ij")
            sigma, albedo = self.activate(raw, torch.stack([xx, yy, zz], dim=-1), alpha)
            out[0, z0:z1] = sigma
            out[1:, z0:z1] = albedo.permute(3, 0, 1, 2)
        return out
