"""The prior-gap diagnostic (toyworld/prior_gap.py): paired renders of a generator and the exact scenes from the
same views, and the prior's denoising errors on both in the units of the text signal."""

import dataclasses

import pytest
import torch

from instant3d.testing.random_models import random_small_pipeline
from instant3d.testing.random_priors import save_random_prior
from toyworld.prior_gap import gap_table, paired_renders, rival_prompt
from toyworld.prior_probe import attribute_alternatives
from training.guidance import DiffusionGuidance

PROMPTS = ["a red cube", "a white snowman with a carrot nose"]


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    guidance = DiffusionGuidance.from_folder(save_random_prior(tmp_path_factory.mktemp("prior"), sample_size=16),
                                             perp_neg="none")
    pairs = paired_renders(random_small_pipeline(), PROMPTS, views=2, size=16, samples=8, importance=8)
    return guidance, pairs


def test_paired_renders_show_both_objects_from_the_same_views_with_view_captions(setting):
    _, pairs = setting
    assert pairs.generated.shape == pairs.exact.shape == (4, 3, 16, 16)
    assert 0 <= float(pairs.generated.min()) and float(pairs.generated.max()) <= 1
    assert not torch.allclose(pairs.generated, pairs.exact)  # a random generator does not draw the scene
    for i, prompt in enumerate([PROMPTS[0]] * 2 + [PROMPTS[1]] * 2):
        assert pairs.captions[i].startswith(prompt + ", ") and pairs.captions[i].endswith(" view")
        rival = rival_prompt(prompt)
        assert rival in attribute_alternatives(prompt)["colour"]
        assert pairs.rivals[i] == rival + pairs.captions[i][len(prompt):]  # the same view word
    # the exact scene's corners are the background: the same colour in both renders of a view
    assert torch.allclose(pairs.exact[:, :, 0, 0], pairs.generated[:, :, 0, 0], atol=0.02)


def test_a_generator_that_renders_the_exact_scene_has_no_gap(setting):
    guidance, pairs = setting
    same = dataclasses.replace(pairs, generated=pairs.exact.clone())
    rows = gap_table(guidance, same, timesteps=(100, 700))
    assert {(r["t"], r["shading"]) for r in rows} >= {(100, "all"), (700, "all")}
    assert all(r["gap"] == pytest.approx(0.0, abs=1e-7) for r in rows)


def test_the_gap_is_the_error_difference_under_the_same_noise_computed_by_hand(setting):
    guidance, pairs = setting
    t = 300
    row = next(r for r in gap_table(guidance, pairs, timesteps=(t,)) if r["shading"] == "all")
    noises = torch.randn(len(pairs.exact), 1, 3, 16, 16, generator=torch.Generator().manual_seed(0))[:, 0]
    abar = float(guidance.alphas_cumprod[t])
    tokens, _ = guidance.text_encoder.encode(pairs.captions)

    def error(images):
        x_t = abar ** 0.5 * (images * 2 - 1) + (1 - abar) ** 0.5 * noises
        eps = guidance.predict_noise(x_t, torch.full((len(images),), t), tokens)
        return float((eps - noises).pow(2).mean())

    with torch.no_grad():
        assert row["exact"] == pytest.approx(error(pairs.exact), rel=1e-5)
        assert row["generated"] == pytest.approx(error(pairs.generated), rel=1e-5)
    assert row["gap"] == pytest.approx(row["generated"] - row["exact"])
    assert row["images"] == 4


def test_a_supersampled_generator_render_is_the_block_mean_of_the_larger_render(setting):
    import torch.nn.functional as F

    from instant3d.render.color import linear_to_srgb
    from instant3d.render.renderer import render_views
    from training.sampling import CameraRanges, sample_views
    from toyworld.prior_train import PRIOR_SHADING

    _, pairs = setting
    pipe = random_small_pipeline()
    again = paired_renders(pipe, PROMPTS[:1], views=2, size=16, samples=8, importance=8, supersample=2)
    assert again.captions == pairs.captions[:2] and torch.allclose(again.exact, pairs.exact[:2])  # the same views
    # by hand: the same views at 32^2 over their backgrounds, 2x2 blocks averaged in linear light, then sRGB
    views = sample_views(2, CameraRanges(), PRIOR_SHADING, torch.Generator().manual_seed(0))
    out = pipe(PROMPTS[0], seed=0)
    big = render_views(out.field, out.triplane, views.cameras, 32, background=(0.0, 0.0, 0.0), num_samples=8,
                       num_importance=8, shading=views.shading, light_dirs=views.light_dirs)
    linear = big.color + (1 - big.opacity[..., None]) * views.background[:, None, None, :]
    want = linear_to_srgb(F.avg_pool2d(linear.permute(0, 3, 1, 2), 2).clamp(0, 1))
    assert torch.allclose(again.generated, want, atol=1e-5)
    assert not torch.allclose(again.generated, pairs.generated[:2], atol=1e-3)  # not the one-ray render
