import math

import pytest
import torch

from instant3d.config import FieldConfig
from instant3d.models.field import PLANE_AXES, TriplaneField, scaled_sigmoid


@pytest.mark.parametrize("alpha", [0.25, 0.5, 0.75, 1.0])
def test_scaled_sigmoid_range_and_slope(alpha):
    x = torch.linspace(-60, 60, 2001, dtype=torch.float64)
    y = scaled_sigmoid(x, alpha)
    assert y.min() >= 0 and y.max() <= 1 / alpha
    assert y.max() > 0.99 / alpha  # reaches close to its upper limit
    x0 = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(scaled_sigmoid(x0, alpha).sum(), x0)
    assert grad.item() == pytest.approx(0.25, abs=1e-12)


def test_scaled_sigmoid_with_alpha_one_is_the_sigmoid():
    x = torch.randn(1000, dtype=torch.float64) * 5
    assert torch.equal(scaled_sigmoid(x, 1.0), torch.sigmoid(x))
    with pytest.raises(ValueError):
        scaled_sigmoid(x, 0.0)


def _bilinear_reference(plane, u, v):
    """Brute-force bilinear lookup (align_corners=False, zero padding) of a (C, R, R) plane, in float64."""
    c, r, _ = plane.shape
    x, y = (u + 1) * r / 2 - 0.5, (v + 1) * r / 2 - 0.5
    x0, y0 = math.floor(x), math.floor(y)
    out = torch.zeros(c, dtype=torch.float64)
    for yi in (y0, y0 + 1):
        for xi in (x0, x0 + 1):
            if 0 <= xi < r and 0 <= yi < r:
                out += plane[:, yi, xi].double() * (1 - abs(x - xi)) * (1 - abs(y - yi))
    return out


@pytest.mark.parametrize("aggregation", ["mean", "concat"])
def test_plane_features_follow_the_xy_xz_zy_convention(aggregation):
    torch.manual_seed(0)
    field = TriplaneField(FieldConfig(aggregation=aggregation, hidden_dims=(8,), bound=1.5), plane_channels=4)
    planes = torch.randn(1, 3, 4, 8, 8)
    points = (torch.rand(1, 20, 3) * 2 - 1) * 1.5
    feats = field.plane_features(planes, points)[0]  # (N, 3, C)
    for n in range(points.shape[1]):
        p = points[0, n].double() / 1.5
        for k, (a, b) in enumerate(PLANE_AXES):
            ref = _bilinear_reference(planes[0, k], p[a].item(), p[b].item())
            assert torch.allclose(feats[n, k].double(), ref, atol=1e-5)
    assert PLANE_AXES == ((0, 1), (0, 2), (2, 1))  # XY, XZ, ZY


def test_density_is_softplus_of_raw_plus_blob_minus_shift():
    field = TriplaneField(FieldConfig(hidden_dims=(8,)), plane_channels=4)
    points = torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.0, 0.0], [1.0, 1.0, 1.0]])
    raw = torch.zeros(3, 4)
    sigma, albedo = field.activate(raw, points)
    blob = 10 * (1 - points.norm(dim=-1) / 0.6)
    assert torch.allclose(sigma, torch.nn.functional.softplus(blob - 1.0))
    assert torch.allclose(albedo, torch.full((3, 3), 0.5))


@pytest.mark.parametrize("aggregation", ["mean", "concat"])
def test_bake_equals_the_field_at_grid_points(aggregation):
    torch.manual_seed(1)
    field = TriplaneField(FieldConfig(aggregation=aggregation, hidden_dims=(16, 8)), plane_channels=6)
    planes = torch.randn(1, 3, 6, 16, 16)
    g = 12
    baked = field.bake(planes, g, slab=5)  # (4, z, y, x)
    c = (torch.arange(g) + 0.5) / g * 2 - 1
    zz, yy, xx = torch.meshgrid(c, c, c, indexing="ij")
    points = torch.stack([xx, yy, zz], dim=-1).reshape(1, -1, 3)
    with torch.no_grad():
        sigma, albedo = field(planes, points)
    assert torch.allclose(baked[0].reshape(-1), sigma[0], rtol=1e-4, atol=1e-5)
    assert torch.allclose(baked[1:].reshape(3, -1).T, albedo[0], atol=1e-5)


def test_training_srgb_curve_matches_the_standard_in_range_and_keeps_gradients_above_one():
    """The scaled sigmoid at alpha < 1 gives albedo up to 1/alpha; the curve the priors see must not go flat there."""
    from instant3d.render.color import linear_to_srgb, linear_to_srgb_unbounded

    x = torch.linspace(0, 1, 1001, dtype=torch.float64)
    assert torch.allclose(linear_to_srgb_unbounded(x), linear_to_srgb(x), atol=0, rtol=0)
    above = torch.tensor([1.0, 1.5, 2.0], dtype=torch.float64, requires_grad=True)
    y = linear_to_srgb_unbounded(above)
    expected = 1.055 * above.detach() ** (1 / 2.4) - 0.055  # the IEC 61966-2-1 formula, continued
    assert torch.allclose(y, expected.to(y.dtype)) and bool((y[1:] > 1).all())
    (grad,) = torch.autograd.grad(y.sum(), above)
    assert bool((grad > 0).all())  # the clipped curve has zero gradient at 1.5 and 2
    clipped = above.detach().clone().requires_grad_(True)
    (flat,) = torch.autograd.grad(linear_to_srgb(clipped).sum(), clipped)
    assert flat[1:].abs().max() == 0
    assert linear_to_srgb_unbounded(torch.tensor([-0.5])).item() == 0.0


def test_a_fresh_field_is_neutral_grey_everywhere_and_its_albedo_still_learns():
    torch.manual_seed(0)
    field = TriplaneField(FieldConfig(), plane_channels=8)
    planes = torch.randn(2, 3, 8, 16, 16)
    points = torch.rand(2, 500, 3) * 2 - 1
    sigma, albedo = field(planes, points, alpha=1.0)
    assert torch.equal(albedo, torch.full_like(albedo, 0.5))  # no colour cast from the random init
    assert sigma.std() > 0  # density still depends on the planes
    albedo[..., 0].sum().backward()
    assert field.layers[-1].weight.grad[1].abs().sum() > 0  # the red row learns
