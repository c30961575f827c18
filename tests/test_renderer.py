import math
from types import SimpleNamespace

import pytest
import torch

from instant3d.render.cameras import camera_positions, generate_rays, orbit_cameras, ray_box_intersect
from instant3d.render.renderer import importance_samples, render_rays, render_views


class AnalyticField(torch.nn.Module):
    """A field with the renderer's interface: uniform density inside a sphere, colour by side of the object."""

    def __init__(self, radius=0.5, sigma=2.0, front=(1.0, 0.0, 0.0), back=(0.0, 0.0, 1.0), bound=1.0):
        super().__init__()
        self.cfg = SimpleNamespace(bound=bound)
        self.radius, self.sigma = radius, sigma
        self.front, self.back = torch.tensor(front), torch.tensor(back)

    def forward(self, planes, points, alpha=None):
        inside = points.norm(dim=-1) < self.radius
        sigma = torch.where(inside, torch.full_like(points[..., 0], self.sigma), torch.zeros_like(points[..., 0]))
        rgb = torch.where((points[..., 2] > 0)[..., None], self.front, self.back)
        return sigma, rgb.expand(*points.shape[:-1], 3)

    def normals(self, planes, points):
        return torch.nn.functional.normalize(points, dim=-1)


NO_PLANES = torch.zeros(1, 3, 1, 1, 1)  # the analytic field ignores its planes


def _center_ray(azimuth=0.0, elevation=0.0, radius=3.0):
    origin = camera_positions(azimuth, elevation, radius)
    return origin.view(1, 1, 3), (-origin / origin.norm()).view(1, 1, 3)


@pytest.mark.parametrize("sigma", [0.5, 2.0, 6.0])
def test_uniform_sphere_through_its_centre_has_closed_form_opacity(sigma):
    field = AnalyticField(radius=0.5, sigma=sigma)
    o, d = _center_ray(azimuth=37.0, elevation=21.0)
    out = render_rays(field, NO_PLANES, o, d, num_samples=64, num_importance=64)
    expected = 1 - math.exp(-sigma * 2 * 0.5)
    assert out.opacity.item() == pytest.approx(expected, abs=5e-3)


def test_opaque_sphere_depth_is_the_distance_to_its_surface():
    field = AnalyticField(radius=0.5, sigma=200.0)
    o, d = _center_ray(radius=3.0)
    out = render_rays(field, NO_PLANES, o, d, num_samples=64, num_importance=64, with_depth_variance=True)
    assert out.opacity.item() == pytest.approx(1.0, abs=1e-6)
    assert out.depth.item() == pytest.approx(2.5, abs=0.02)
    assert out.depth_variance.item() < 1e-3  # a thin shell absorbs it all


@pytest.mark.parametrize("sigma", [0.5, 2.0, 6.0])
def test_depth_variance_of_a_uniform_fog_matches_dense_float64_integration(sigma):
    """Through a uniform sphere of diameter 1 the light is absorbed with density w(s) = sigma exp(-sigma s) over
    s in [0, 1]; the renderer's z-variance should be the integral of w (s - mean)^2, mean = int w s / int w."""
    import numpy as np

    field = AnalyticField(radius=0.5, sigma=sigma)
    o, d = _center_ray(azimuth=-50.0, elevation=30.0)
    out = render_rays(field, NO_PLANES, o, d, num_samples=128, num_importance=128, with_depth_variance=True)
    assert render_rays(field, NO_PLANES, o, d, num_samples=8, num_importance=8).depth_variance is None  # not asked
    s = np.linspace(0.0, 1.0, 2_000_001, dtype=np.float64)
    w = sigma * np.exp(-sigma * s)
    mean = np.trapezoid(w * s, s) / np.trapezoid(w, s)
    expected = np.trapezoid(w * (s - mean) ** 2, s)
    assert out.depth.item() == pytest.approx(2.5 + mean, abs=0.01)
    assert out.depth_variance.item() == pytest.approx(expected, rel=0.03)


def test_lit_views_match_lambert_at_the_centre_pixel_with_one_light_per_view():
    """An opaque sphere seen through its centre: the surface normal there points at the camera, so the pixel is
    albedo x (ambient + (1 - ambient) cos(camera direction, light)), with each view's own display light."""
    from instant3d.render.shading import DISPLAY_AMBIENT, display_light

    field = AnalyticField(radius=0.5, sigma=500.0, front=(0.8, 0.6, 0.4), back=(0.8, 0.6, 0.4))
    cams = orbit_cameras([20.0, 200.0, 90.0], [70.0, -30.0, 0.0], radius=3.0)
    lights = display_light(cams.position)
    lights[2] = -lights[2]  # a light from behind the object: only the ambient term is left
    img = render_views(field, NO_PLANES, cams, 15, num_samples=64, num_importance=64, shading="lambertian",
                       light_dirs=lights, ambient=DISPLAY_AMBIENT).color
    for v in range(3):
        towards_camera = cams.position[v].double() / cams.position[v].double().norm()
        cos = max(float(towards_camera @ lights[v].double()), 0.0)
        expected = torch.tensor([0.8, 0.6, 0.4], dtype=torch.float64) * (DISPLAY_AMBIENT + (1 - DISPLAY_AMBIENT) * cos)
        assert torch.allclose(img[v, 7, 7].double(), expected, atol=2e-3), (v, img[v, 7, 7], expected)
    assert img[0, 7, 7].sum() > img[2, 7, 7].sum() + 0.5  # the lights really differ per view


def test_empty_field_renders_the_background_exactly():
    field = AnalyticField(radius=0.0)
    cams = orbit_cameras([0, 120], [10, -30])
    bg = (0.25, 0.5, 0.75)
    out = render_views(field, NO_PLANES, cams, 16, background=bg, num_samples=8, num_importance=8)
    assert torch.equal(out.color, torch.tensor(bg).expand(2, 16, 16, 3))
    assert torch.equal(out.opacity, torch.zeros(2, 16, 16))


def test_front_colour_is_seen_from_azimuth_0_and_not_from_180():
    field = AnalyticField(radius=0.5, sigma=100.0, front=(1.0, 0.0, 0.0), back=(0.0, 0.0, 1.0))
    img = render_views(field, NO_PLANES, orbit_cameras([0, 180, 90], [0, 0, 0]), 16, num_samples=32, num_importance=32)
    centre = img.color[:, 8, 8]
    assert torch.allclose(centre[0], torch.tensor([1.0, 0.0, 0.0]), atol=1e-3)  # azimuth 0: the front (+Z)
    assert torch.allclose(centre[1], torch.tensor([0.0, 0.0, 1.0]), atol=1e-3)  # azimuth 180: the back


def test_camera_conventions():
    pos = camera_positions([0, 90, 180, 0], [0, 0, 0, 90], 2.0)
    expected = torch.tensor([[0, 0, 2.0], [2.0, 0, 0], [0, 0, -2.0], [0, 2.0, 0]])
    assert torch.allclose(pos, expected, atol=1e-6)
    cams = orbit_cameras([0, 90], [0, 0], 2.0, 40.0)
    o, d = generate_rays(cams, 4)
    # The image's left column looks towards -X from the front, and towards +Z from azimuth 90 (counter-clockwise).
    assert d[0, :, 0, 0].mean() < 0 and d[1, :, 0, 2].mean() > 0
    # The image's top row looks up (+Y).
    assert d[0, 0, :, 1].mean() > 0
    assert torch.allclose(d.norm(dim=-1), torch.ones(2, 4, 4))
    # Straight above still gives a valid, upright camera.
    top = orbit_cameras(0, 90, 2.0)
    assert torch.isfinite(top.rotation).all()


def test_ray_box_intersection_against_brute_force():
    torch.manual_seed(0)
    o = torch.randn(500, 3) * 2
    d = torch.nn.functional.normalize(torch.randn(500, 3), dim=-1)
    near, far, hit = ray_box_intersect(o, d, -1.0, 1.0)
    t = torch.linspace(0, 8, 40001)
    pts = o[:, None] + d[:, None] * t[None, :, None]
    inside = (pts.abs() <= 1).all(dim=-1)
    assert torch.equal(hit, inside.any(dim=1)) or (hit != inside.any(dim=1)).sum() <= 2  # grazing rays
    for i in torch.nonzero(hit & inside.any(dim=1)).squeeze(-1)[:100]:
        ts = t[inside[i]]
        assert near[i].item() == pytest.approx(ts.min().item(), abs=5e-4)
        assert far[i].item() == pytest.approx(ts.max().item(), abs=5e-4)


def test_importance_samples_follow_the_weights():
    starts = torch.linspace(0, 1, 11)[:-1].expand(1, 10)
    ends = starts + 0.1
    weights = torch.zeros(1, 10)
    weights[0, 6] = 100.0  # all the mass in [0.6, 0.7]
    s = importance_samples(starts, ends, weights, 200)
    in_peak = ((s >= 0.5) & (s <= 0.8)).float().mean()
    assert in_peak > 0.8  # smoothing (max-pool, avg-pool, +0.01) spreads a little mass to neighbours
    assert torch.all(s[:, 1:] >= s[:, :-1])


def test_renderer_is_differentiable_and_takes_per_image_backgrounds():
    from instant3d.config import FieldConfig
    from instant3d.models.field import TriplaneField

    field = TriplaneField(FieldConfig(hidden_dims=(8,)), plane_channels=4)
    planes = torch.randn(2, 3, 4, 8, 8, requires_grad=True)
    cams = orbit_cameras([0, 90], [10, 10])
    o, d = generate_rays(cams, 8)
    bg = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    out = render_rays(field, planes, o.reshape(2, -1, 3), d.reshape(2, -1, 3), num_samples=8, num_importance=8,
                      background=bg, perturb=True, generator=torch.Generator().manual_seed(0))
    out.color.mean().backward()
    assert planes.grad is not None and planes.grad.abs().sum() > 0
    assert out.color.shape == (2, 64, 3)
