"""The training package: loading priors, SDS, Perp-Neg, adaptive severity, schedules, prompt sets, the trainer
(resume after SIGKILL, truncated checkpoints, NaN handling), two-process DDP, and evaluation."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.clip_model import CLIPError, CLIPScorer
from training.config import load_config
from training.guidance import DiffusionGuidance, PriorError
from training.perpneg import (
    SeverityCache,
    perp_neg_guidance,
    perpendicular_component,
    severity,
    view_blend,
)
from training.prompt_sets import animals, load_prompt_set, portraits
from instant3d.testing.random_priors import save_random_clip, save_random_prior
from training.sampling import alpha_schedule

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "training" / "configs" / "smoke.toml"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def pixel_prior(tmp_path_factory):
    return save_random_prior(tmp_path_factory.mktemp("prior") / "pixel", latent=False)


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return save_random_clip(tmp_path_factory.mktemp("clip") / "clip")


# -- loading ----------------------------------------------------------------------------------------------------
def test_loads_a_stable_diffusion_layout_with_vae_and_a_clip_model(tmp_path, clip_folder):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    folder = save_random_prior(tmp_path / "sd", latent=True)
    g = DiffusionGuidance.from_folder(folder)
    assert isinstance(g.unet, UNet2DConditionModel) and isinstance(g.vae, AutoencoderKL)
    assert g.input_size == 16  # UNet sample 8 x VAE factor 2
    latents = g.encode_images(torch.rand(2, 3, 32, 32))
    assert latents.shape == (2, 4, 8, 8)
    clip = CLIPScorer.from_folder(clip_folder)
    assert clip.image_features(torch.rand(2, 3, 40, 40)).shape == (2, 32)
    assert torch.allclose(clip.text_features(["a cat"]).norm(dim=-1), torch.ones(1))


def test_incomplete_prior_and_clip_folders_name_the_problem(tmp_path, pixel_prior):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(pixel_prior, bad)
    shutil.rmtree(bad / "scheduler")
    with pytest.raises(PriorError, match="scheduler/ is missing"):
        DiffusionGuidance.from_folder(bad)
    with pytest.raises(CLIPError, match="config.json is missing"):
        CLIPScorer.from_folder(tmp_path)
    with pytest.raises(CLIPError, match="full CLIPModel"):
        CLIPScorer.from_folder(pixel_prior / "text_encoder")


# -- SDS --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["none", "fixed", "adaptive"])
def test_sds_gradient_is_zero_when_the_unet_predicts_the_true_noise(pixel_prior, mode):
    g = DiffusionGuidance.from_folder(pixel_prior, perp_neg=mode)
    images = torch.rand(2, 3, 16, 16, requires_grad=True)
    noise = torch.randn(2, 3, 16, 16)
    g.predict_noise = lambda x_t, t, emb, cameras=None: noise.repeat(x_t.shape[0] // 2, 1, 1, 1)
    out = g.sds(images, ["a cat", "a dog"], [0, 130], [10, 20], torch.tensor([1.0, 2.0]), noise=noise)
    out.loss.backward()
    assert torch.equal(images.grad, torch.zeros_like(images))


def test_sds_gradient_has_the_sign_and_scale_of_w_times_eps_hat_minus_eps(pixel_prior):
    g = DiffusionGuidance.from_folder(pixel_prior, perp_neg="none", guidance_scale=7.5)
    images = torch.rand(2, 3, 16, 16, requires_grad=True)
    noise = torch.randn(2, 3, 16, 16)
    eps_cond, eps_uncond = torch.full_like(noise, 0.3), torch.full_like(noise, -0.1)
    g.predict_noise = lambda x_t, t, emb, cameras=None: torch.cat([eps_cond, eps_uncond])
    t = torch.tensor([100, 700])
    out = g.sds(images, ["a cat", "a dog"], [0, 0], [0, 0], noise=noise, timesteps=t)
    out.loss.backward()
    w = (1 - g.alphas_cumprod[t]).view(-1, 1, 1, 1)
    eps_hat = eps_uncond + 7.5 * (eps_cond - eps_uncond)
    expected = w * (eps_hat - noise) * 2 / 2  # d x / d image = 2 (x = 2 image - 1); the loss is a batch mean (/2)
    assert torch.allclose(images.grad, expected, atol=1e-5)


@pytest.mark.parametrize("estimator", ["csd", "nfsd", "asd"])
def test_each_score_estimator_matches_its_closed_form(pixel_prior, estimator):
    """With a mocked UNet: grad = w(t) (eps_hat - baseline), the baseline being the unconditional prediction
    (CSD), 0 below t = 200 and the unconditional prediction above (NFSD, no negative prompt), or the conditional
    prediction at the later timestep t + floor(0.1 (t - t_min) u) of the same noise (ASD)."""
    g = DiffusionGuidance.from_folder(pixel_prior, perp_neg="none", guidance_scale=7.5, estimator=estimator)
    images = torch.rand(2, 3, 16, 16, requires_grad=True)
    noise = torch.randn(2, 3, 16, 16)
    eps_cond, eps_uncond = torch.full_like(noise, 0.3), torch.full_like(noise, -0.1)

    def fake_unet(x_t, t, emb, cameras=None):
        if x_t.shape[0] == 4:  # the guided pair: conditional, then unconditional
            return torch.cat([eps_cond, eps_uncond])
        return 0.5 * x_t + t.view(-1, 1, 1, 1).float() / 1000  # ASD's second call: depends on x_t' and t'

    g.predict_noise = fake_unet
    t, u = torch.tensor([100, 700]), torch.tensor([0.5, 1.0])
    out = g.sds(images, ["a cat", "a dog"], [0, 0], [0, 0], noise=noise, timesteps=t, later_fraction=u)
    out.loss.backward()
    abar = g.alphas_cumprod
    x = images.detach() * 2 - 1
    eps_hat = eps_uncond + 7.5 * (eps_cond - eps_uncond)
    if estimator == "csd":
        baseline = eps_uncond
    elif estimator == "nfsd":
        baseline = torch.stack([torch.zeros_like(eps_uncond[0]), eps_uncond[1]])  # t = 100 < 200, t = 700
    else:
        later = torch.tensor([100 + 4, 700 + 68])  # floor(0.1 * (t - 20) * u), t_min = 0.02 * 1000
        a = abar[later].view(-1, 1, 1, 1)
        baseline = 0.5 * (a.sqrt() * x + (1 - a).sqrt() * noise) + later.view(-1, 1, 1, 1).float() / 1000
    expected = (1 - abar[t]).view(-1, 1, 1, 1) * (eps_hat - baseline)
    assert torch.allclose(images.grad, expected, atol=1e-5)


def test_nfsd_removes_a_negative_prompts_prediction_above_t_200(pixel_prior):
    g = DiffusionGuidance.from_folder(pixel_prior, perp_neg="none", guidance_scale=7.5, estimator="nfsd",
                                      negative_prompt="blurry")
    images = torch.rand(1, 3, 16, 16, requires_grad=True)
    eps_cond, eps_uncond, eps_neg = (torch.full((1, 3, 16, 16), v) for v in (0.3, -0.1, 0.2))
    g.predict_noise = lambda x_t, t, emb, cameras=None: (torch.cat([eps_cond, eps_uncond]) if x_t.shape[0] == 2
                                                          else eps_neg)
    t = torch.tensor([600])
    g.sds(images, ["a cat"], [0], [0], noise=torch.zeros(1, 3, 16, 16), timesteps=t).loss.backward()
    expected = 2 * (1 - g.alphas_cumprod[t]) * (eps_uncond + 7.5 * (eps_cond - eps_uncond) - eps_neg)  # dx/dimage = 2
    assert torch.allclose(images.grad, expected.expand_as(images.grad), atol=1e-5)


def test_timestep_annealing_lowers_the_largest_timestep(pixel_prior):
    g = DiffusionGuidance.from_folder(pixel_prior, perp_neg="none")
    gen = torch.Generator().manual_seed(0)
    g.predict_noise = lambda x_t, t, emb, cameras=None: torch.zeros_like(x_t)
    drawn = torch.cat([g.sds(torch.rand(8, 3, 16, 16), ["a cat"] * 8, [0] * 8, [0] * 8, generator=gen,
                             t_max=0.3).timesteps for _ in range(20)])
    assert drawn.max() <= 300 and drawn.min() >= 20 and drawn.max() > 250
    with pytest.raises(PriorError, match="estimator must be one of"):
        DiffusionGuidance.from_folder(pixel_prior, estimator="vsd")


# -- Perp-Neg -----------------------------------------------------------------------------------------------------
def test_perp_neg_matches_a_float64_reference():
    rng = np.random.default_rng(0)
    eps_u, eps_p = rng.normal(size=(3, 4, 5, 5)), rng.normal(size=(3, 4, 5, 5))
    eps_n = rng.normal(size=(3, 2, 4, 5, 5))
    w = rng.uniform(0, 2, size=(3, 2))
    s = 7.0
    ref = np.zeros_like(eps_u)
    for b in range(3):
        e_pos = (eps_p[b] - eps_u[b]).ravel()
        total = np.zeros_like(e_pos)
        for k in range(2):
            e_neg = (eps_n[b, k] - eps_u[b]).ravel()
            total += w[b, k] * (e_neg - e_neg.dot(e_pos) / e_pos.dot(e_pos) * e_pos)
        ref[b] = eps_u[b] + s * (e_pos - total).reshape(4, 5, 5)
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    got = perp_neg_guidance(t(eps_u), t(eps_p), t(eps_n), t(w), s).double().numpy()
    assert np.allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_perpendicular_component_is_orthogonal():
    x, y = torch.randn(6, 4, 8, 8, dtype=torch.float64), torch.randn(6, 4, 8, 8, dtype=torch.float64)
    p = perpendicular_component(x, y)
    assert torch.allclose((p * y).sum(dim=(1, 2, 3)), torch.zeros(6, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(perpendicular_component(y, y), torch.zeros_like(y), atol=1e-9)


def test_view_weights_at_front_side_back_and_overhead():
    b = view_blend([0, 90, 180, -90, 270, 45], [0, 0, 0, 0, 0, 80])
    # (front, side, back, overhead) weights of the positive embedding
    assert torch.allclose(b.positive[0], torch.tensor([1.0, 0, 0, 0]))
    assert torch.allclose(b.positive[1], torch.tensor([0, 1.0, 0, 0]))
    assert torch.allclose(b.positive[2], torch.tensor([0, 0, 1.0, 0]))
    assert torch.allclose(b.positive[3], b.positive[1]) and torch.allclose(b.positive[4], b.positive[1])
    f = lambda a, bb, c, r: a * np.exp(-bb * r) + c  # noqa: E731
    # front: negatives front (f_fs(1) = 0) and side (f_sf(0) = 1.574)
    assert b.negative_weights[0].tolist() == pytest.approx([f(4, .5, -2.426, 1), f(4, .5, -2.426, 0)], abs=1e-5)
    assert b.negative_weights[0].tolist() == pytest.approx([0.0, 1.574], abs=1e-3)
    # side: negatives side (f_sb(1) ~ 0) and front (f_fsb(1) = 1.574)
    assert b.negative_weights[1].tolist() == pytest.approx([f(1, .5, -.606, 1), f(1, .5, .967, 1)], abs=1e-5)
    # back: side (f_sb(0) = 0.394) and front (f_fsb(0) = 1.967)
    assert b.negative_weights[2].tolist() == pytest.approx([0.394, 1.967], abs=1e-5)
    # overhead: the overhead prompt, no negatives
    assert torch.allclose(b.positive[5], torch.tensor([0, 0, 0, 1.0])) and b.negative_weights[5].abs().sum() == 0


# -- adaptive severity ---------------------------------------------------------------------------------------------
def test_severity_extremes_and_range():
    f = torch.nn.functional.normalize(torch.randn(5, 16), dim=-1)
    opposite = severity(f, torch.tensor([[0.0, 0.0]] * 5), f, torch.tensor([[180.0, 0.0]] * 5))
    assert torch.allclose(opposite, torch.ones(5), atol=1e-6)  # identical features at opposite views: C = 1
    g = torch.nn.functional.normalize(torch.randn(5, 16), dim=-1)
    views = torch.tensor([[30.0, 10.0]] * 5)
    assert torch.allclose(severity(f, views, g, views), torch.zeros(5), atol=1e-6)  # same view: C = 0
    views_a = torch.stack([torch.rand(200) * 360, torch.rand(200) * 110 - 20], dim=-1)
    views_b = torch.stack([torch.rand(200) * 360, torch.rand(200) * 110 - 20], dim=-1)
    c = severity(torch.randn(200, 16), views_a, torch.randn(200, 16), views_b)
    assert c.min() >= 0 and c.max() <= 1


def test_severity_cache_uses_the_previous_view_of_the_same_prompt():
    cache = SeverityCache()
    f = torch.nn.functional.normalize(torch.randn(1, 8), dim=-1)
    assert cache.update(["a"], f, torch.tensor([[0.0, 0.0]])).item() == 0  # first visit
    assert cache.update(["a"], f, torch.tensor([[180.0, 0.0]])).item() == pytest.approx(1.0, abs=1e-6)
    assert cache.update(["b"], f, torch.tensor([[180.0, 0.0]])).item() == 0  # another prompt
    keys, tensors = cache.state()
    again = SeverityCache()
    again.load(keys, tensors)
    assert again.update(["a"], f, torch.tensor([[0.0, 0.0]])).item() == pytest.approx(1.0, abs=1e-6)


# -- schedules, prompt sets, config --------------------------------------------------------------------------------
def test_alpha_schedule_anneals_from_half_to_exactly_one():
    assert alpha_schedule(0, 0.5, 0, 100) == 0.5
    assert alpha_schedule(50, 0.5, 0, 100) == pytest.approx(0.75)
    assert alpha_schedule(100, 0.5, 0, 100) == 1.0 and alpha_schedule(10**6, 0.5, 0, 100) == 1.0
    values = [alpha_schedule(s, 0.5, 10, 90) for s in range(100)]
    assert all(a <= b for a, b in zip(values, values[1:]))


def test_close_ups_look_at_their_targets_through_a_narrower_lens():
    from instant3d.render.cameras import generate_rays
    from training.sampling import CameraRanges, close_up_views, sample_views

    gen = torch.Generator().manual_seed(3)
    ranges = CameraRanges()
    views = sample_views(64, ranges, {"albedo": 1.0}, gen)
    targets = torch.tensor([[0.0, 0.3, 0.4], [0.3, -0.4, 0.0]]).repeat(32, 1)  # in front (azimuth 0), on +X (90)
    chosen = torch.arange(64) % 4 != 3
    close = close_up_views(views, targets, chosen, ranges, (2.0, 4.0), gen)
    origins, dirs = generate_rays(close.cameras, 2)  # the four rays around the image centre
    centre_ray = F.normalize(dirs.mean(dim=(1, 2)), dim=-1)
    to_target = F.normalize(targets - close.cameras.position, dim=-1)
    along = (centre_ray * to_target).sum(-1)
    assert (along[chosen] > 1 - 1e-5).all()  # the target sits at the image centre
    assert not (along[~chosen] > 1 - 1e-5).any()  # the others still look at the origin
    ratio = views.cameras.fov_deg / close.cameras.fov_deg
    assert ((ratio[chosen] >= 2.0) & (ratio[chosen] <= 4.0)).all() and (ratio[~chosen] == 1).all()
    distance = (close.cameras.position - targets).norm(dim=-1)[chosen]
    assert ((distance >= 3.0 - 1e-4) & (distance <= 3.6 + 1e-4)).all()
    own = torch.tensor([0.0, 90.0]).repeat(32)
    offset = torch.remainder(close.azimuth - own + 180, 360) - 180  # on the target's side of the object
    assert (offset[chosen].abs() <= 60 + 1e-3).all()
    assert torch.equal(close.cameras.position[~chosen], views.cameras.position[~chosen])
    assert torch.equal(close.background, views.background)


def test_close_up_settings_are_checked(tmp_path):
    base = [f'run.output_dir="{tmp_path}"']
    with pytest.raises(ValueError, match="render.close_up is a probability"):
        load_config(SMOKE, base + ["render.close_up=1.5"])
    with pytest.raises(ValueError, match="close_up_zoom"):
        load_config(SMOKE, base + ["render.close_up_zoom=[0.5, 2.0]"])
    with pytest.raises(ValueError, match="render.close_up_back is a probability"):
        load_config(SMOKE, base + ["render.close_up_back=-0.1"])
    with pytest.raises(ValueError, match="detail_weight must be > 0"):
        load_config(SMOKE, base + ["prompts.detail_weight=0"])
    with pytest.raises(ValueError, match="word_weights.yellow must be a number > 0"):
        load_config(SMOKE, base + ["prompts.word_weights={yellow = 0}"])
    with pytest.raises(ValueError, match="word_weights keys are single words"):
        load_config(SMOKE, base + ['prompts.word_weights={"red cube" = 2.0}'])
    import toyworld  # noqa: F401  (registers its set, so the message can name it even when this test runs alone)
    from training.prompt_sets import detail_points_finder

    with pytest.raises(ValueError, match="'portraits' does not say where its prompts' small parts are.*toyworld"):
        detail_points_finder("portraits")


def test_word_weights_multiply_the_draws_of_prompts_holding_the_word():
    from collections import Counter

    from training.trainer import draw_weight

    cfg = load_config(SMOKE, ["prompts.detail_weight=4.0", "prompts.word_weights={yellow = 3.0, brown = 2.0}"])
    has_parts = lambda p: ["nose"] if "nose" in p else []  # noqa: E731
    prompts = ["a red cube", "a yellow cube", "a yellow snowman with a carrot nose", "a Brown, yellow cone",
               "a yellowish cube"]
    weights = [draw_weight(p, cfg.prompts, has_parts) for p in prompts]
    assert weights == [1.0, 3.0, 12.0, 6.0, 1.0]  # whole words only: "yellowish" is not "yellow"
    assert draw_weight("a yellow snowman with a carrot nose", cfg.prompts) == 3.0  # no part finder: words only
    drawn = Counter(torch.multinomial(torch.tensor(weights), 23000, replacement=True,
                                      generator=torch.Generator().manual_seed(0)).tolist())
    for i, w in enumerate(weights):  # the trainer draws with these weights: shares follow them
        assert abs(drawn[i] / 23000 - w / sum(weights)) < 0.01


@pytest.mark.slow
def test_close_ups_aim_at_the_small_parts_of_prompts_drawn_more_often(tmp_path, monkeypatch):
    import training.trainer as trainer_module
    from toyworld import detail_points

    cfg = load_config(SMOKE, [f'run.output_dir="{tmp_path}"', 'objective.mode="supervised"', 'prompts.set="toyworld"',
                              "prompts.validation=[]", "optim.steps=2", "optim.batch_size=8",
                              "run.checkpoint_every=100", "prompts.detail_weight=100.0", "render.close_up=1.0"])
    trainer = trainer_module.Trainer(cfg)
    with_parts = [p for p in trainer.shard if detail_points(p)]
    assert 0 < len(with_parts) < len(trainer.shard) / 10  # few prompts have small parts ...
    calls = []
    real = trainer_module.close_up_views

    def spy(views, targets, chosen, *args):
        calls.append((targets, chosen))
        return real(views, targets, chosen, *args)

    monkeypatch.setattr(trainer_module, "close_up_views", spy)
    monkeypatch.setattr(trainer.text_encoder, "encode", lambda prompts, real=trainer.text_encoder.encode:
                        calls.append(list(prompts)) or real(prompts))
    loss, _ = trainer.compute_loss(torch.Generator().manual_seed(0), 1.0)
    prompts, (targets, chosen) = calls
    assert torch.isfinite(loss)
    assert sum(bool(detail_points(p)) for p in prompts) >= 6  # ... but at weight 100 they fill the batch
    for prompt, target, close in zip(prompts, targets, chosen):  # every view of one (close_up = 1) is a close-up
        assert bool(close) == bool(detail_points(prompt))  # of one of its own parts
        assert not close or any(torch.allclose(target, torch.tensor(p)) for p in detail_points(prompt))
    trainer.cfg.render.close_up_back = 1.0  # every close-up now looks at a part's mirror image, from behind
    calls.clear()
    trainer.compute_loss(torch.Generator().manual_seed(0), 1.0)
    prompts, (targets, chosen) = calls
    for prompt, target, close in zip(prompts, targets, chosen):
        mirrors = [torch.tensor(p) * torch.tensor([1.0, 1.0, -1.0]) for p in detail_points(prompt)]
        assert not close or any(torch.allclose(target, m) for m in mirrors)
    trainer.train()
    assert [c.name for c in _checkpoints(tmp_path)] == ["step-0000002"]


def test_prompt_sets_and_splits():
    a, p = animals(), portraits()
    assert len(a) == len(set(a)) == 3150 and len(p) == len(set(p)) == 400
    for example in ["a cat sitting on books and wearing sunglasses and wearing a cowboy hat",
                    "a fox sitting in a bathtub and wearing a straw hat",
                    "a wolf wearing a scarf and wearing a party hat",
                    "a rabbit sitting in a basket and wearing a tie"]:
        assert example in a
    assert "Kobe wearing a crown is crying" in p
    train, held = load_prompt_set("animals")
    assert (len(train), len(held)) == (1890, 1260) and not set(train) & set(held)
    assert load_prompt_set("animals")[0] == train and load_prompt_set("animals", seed=1)[0] != train


def test_config_overrides_and_errors(tmp_path):
    cfg = load_config(SMOKE, ["optim.lr=3e-4", 'prompts.set="animals"', "render.radius=[2.5, 3.0]", "run.seed=4"])
    assert cfg.optim.lr == 3e-4 and cfg.prompts.set == "animals" and cfg.render.radius == [2.5, 3.0]
    assert cfg.smoke.enabled and cfg.model.preset == "tiny"
    with pytest.raises(ValueError, match="unknown keys in configuration section 'optim'"):
        load_config(SMOKE, ["optim.learning_rate=1"])
    with pytest.raises(ValueError, match="optim.steps must be an integer"):
        load_config(SMOKE, ["optim.steps=many"])
    with pytest.raises(ValueError, match="render.radius must be a number"):
        load_config(SMOKE, ['render.radius=[2.5, "far"]'])
    with pytest.raises(ValueError, match=r"unknown section \[optimiser\]"):
        load_config(SMOKE, ["optimiser.lr=1"])
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "none.toml")


# -- the trainer ---------------------------------------------------------------------------------------------------
def _train_cmd(out: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "training.train", "--config", str(SMOKE), f'run.output_dir="{out}"', *overrides]


def _checkpoints(out: Path) -> list[Path]:
    folder = out / "checkpoints"
    return sorted(folder.glob("step-*")) if folder.is_dir() else []


def _state_step(folder: Path) -> int:
    return json.loads((folder / "trainer_state.json").read_text())["step"]


@pytest.mark.slow
def test_killed_run_resumes_and_a_truncated_checkpoint_falls_back(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(_train_cmd(out, "optim.steps=100000", "run.checkpoint_every=3"), cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not any(_state_step(c) >= 6 for c in _checkpoints(out)
                                                 if (c / "trainer_state.json").exists()):
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    saved = _checkpoints(out)
    assert saved, "no checkpoint was written before the kill"
    last = max(_state_step(c) for c in saved)
    assert last >= 6
    target = last + 4
    done = subprocess.run(_train_cmd(out, f"optim.steps={target}", "run.checkpoint_every=3"), cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"at step {last}" in done.stderr
    newest = _checkpoints(out)[-1]
    assert _state_step(newest) == target
    # a truncated newest checkpoint: detected, and the one before it is used
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    again = subprocess.run(_train_cmd(out, f"optim.steps={target + 2}", "run.checkpoint_every=3"), cwd=ROOT,
                           env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "unreadable" in again.stderr
    previous = [c for c in _checkpoints(out) if _state_step(c) < target]
    assert previous and f"at step {_state_step(previous[-1])}" in again.stderr


KILL_AT_STEP = """
import os, runpy, signal, sys
import training.trainer as trainer

log = trainer.Trainer._log

def log_then_die(self, *args):
    log(self, *args)
    if self.step == int(os.environ["KILL_AT_STEP"]):  # after the step, before its checkpoint: its work is lost
        os.kill(os.getpid(), signal.SIGKILL)

trainer.Trainer._log = log_then_die
sys.argv = ["training.train", *sys.argv[1:]]
runpy.run_module("training.train", run_name="__main__")
"""


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {**load_file(folder / "model.safetensors"),
            **{f"state.{k}": v for k, v in load_file(folder / "trainer_state.safetensors").items()}}


@pytest.mark.slow
def test_a_killed_and_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    """SIGKILL after step 5 (checkpoints every 2): the resumed run replays step 5 from the step-4 checkpoint and
    must end, at step 8, with the same EMA weights, raw weights, Adam moments, EMA count and Perp-Neg severity
    cache as a run never killed. Tolerance: 1e-6 absolute (the same operations in the same order on the CPU; only
    the order of thread reductions could differ, and the test runs one thread)."""
    options = ["optim.steps=8", "run.checkpoint_every=2", "run.keep_checkpoints=10"]
    whole = subprocess.run(_train_cmd(tmp_path / "whole", *options), cwd=ROOT, env=ENV, capture_output=True,
                           text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-2000:]
    out = tmp_path / "killed"
    killed = subprocess.run([sys.executable, "-c", KILL_AT_STEP, "--config", str(SMOKE), f'run.output_dir="{out}"',
                             *options], cwd=ROOT, env={**ENV, "KILL_AT_STEP": "5"}, capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert [_state_step(c) for c in _checkpoints(out)] == [2, 4]
    resumed = subprocess.run(_train_cmd(out, *options), cwd=ROOT, env=ENV, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "at step 4" in resumed.stderr
    expected, got = _weights(_checkpoints(tmp_path / "whole")[-1]), _weights(_checkpoints(out)[-1])
    assert sorted(expected) == sorted(got) and len(expected) > 10
    moved = _weights(_checkpoints(out)[0])  # the test can fail: step 2's raw weights are far from step 8's
    assert max(float((moved[k] - got[k]).abs().max()) for k in got if k.startswith("state.raw.")) > 1e-4
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, atol=1e-6, rtol=0, msg=lambda m: f"{name}: {m}")


def test_non_finite_losses_are_skipped_then_stop_the_run(tmp_path):
    from training.trainer import Trainer, TrainingStopped

    cfg = load_config(SMOKE, [f'run.output_dir="{tmp_path}"', "optim.steps=4", "run.checkpoint_every=2",
                              "optim.max_bad_steps=3"])
    trainer = Trainer(cfg)
    trainer.train()
    assert trainer.step == 4
    good = _checkpoints(tmp_path)
    real = trainer.compute_loss
    calls = {"n": 0}

    def sometimes_nan(gen, alpha):
        loss, stats = real(gen, alpha)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] in (1, 3, 4, 5) else loss), stats

    trainer.compute_loss = sometimes_nan
    cfg.optim.steps = 20
    with pytest.raises(TrainingStopped, match="3 steps in a row.*last good checkpoint is .*step-0000004"):
        trainer.train()
    assert trainer.bad_steps_total == 4 and trainer.step == 5  # one good step between the NaNs
    assert _checkpoints(tmp_path) == good


@pytest.mark.slow
def test_trained_checkpoint_loads_in_the_engine_and_evaluates(tmp_path, clip_folder, capsys):
    from instant3d import Instant3DPipeline
    from training.evaluate import main as evaluate

    out = tmp_path / "run"
    done = subprocess.run(_train_cmd(out, "optim.steps=3"), cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    ckpt = _checkpoints(out)[-1]
    pipe = Instant3DPipeline.from_pretrained(ckpt, device="cpu")
    assert pipe("a girl wearing a crown is laughing").render(0, 15, size=32).shape == (32, 32, 3)
    assert list((out / "validation").glob("*/00.mp4"))
    report = tmp_path / "metrics.json"
    assert evaluate(["--checkpoint", str(ckpt), "--clip", str(clip_folder), "--limit", "3", "--size", "32",
                     "--views", "2", "--output", str(report)]) == 0
    metrics = json.loads(report.read_text())
    assert 0 <= metrics["r_precision"] <= 1 and 0 < metrics["retrieval_probability"] < 1
    assert metrics["queries"] == 400 and metrics["prompts"] == 3 and metrics["training_step"] == 3
    _check_publishing(ckpt, out / "smoke-models" / "prior", pipe, tmp_path, capsys)


def _check_publishing(ckpt: Path, prior: Path, trained, tmp_path: Path, capsys) -> None:
    """A published copy drops the trainer state, references its text encoder from where it ships, is what
    from_pretrained() loads with --default, and refuses a text encoder that encodes prompts differently."""
    import shutil

    import instant3d.registry as registry_module
    import training.publish as publish_module
    from instant3d import Instant3DPipeline
    from transformers import CLIPTextModel

    shipped_prior = tmp_path / "assets" / "priors" / "clip"
    shutil.copytree(prior, shipped_prior)

    # another text encoder of the same shape is refused
    other = tmp_path / "other"
    shutil.copytree(shipped_prior, other)
    model = CLIPTextModel.from_pretrained(other / "text_encoder")
    with torch.no_grad():
        [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)][-1].bias.add_(0.5)  # the final norm
    model.save_pretrained(other / "text_encoder", safe_serialization=True)
    assert publish_module.main([str(ckpt), str(tmp_path / "refused"), "--text-encoder", str(other)]) == 2
    assert "encodes prompts differently" in capsys.readouterr().err and not (tmp_path / "refused").exists()
    # nothing is written over a folder that is not a checkpoint, the source itself, or the text encoder's folder
    for target, why in [(other, "is not a checkpoint"), (ckpt, "the checkpoint being published"),
                        (shipped_prior.parent, "holds the text encoder")]:
        assert publish_module.main([str(ckpt), str(target), "--text-encoder", str(shipped_prior)]) == 2
        assert why in capsys.readouterr().err
    assert (ckpt / "trainer_state.json").exists() and (shipped_prior / "unet").exists()
    checkpoints = tmp_path / "assets" / "checkpoints"
    with pytest.MonkeyPatch.context() as mp:
        for module in (registry_module, publish_module):
            mp.setattr(module, "CHECKPOINTS", checkpoints)
            mp.setattr(module, "DEFAULT_POINTER", checkpoints / "DEFAULT")
        assert publish_module.main([str(ckpt), str(checkpoints / "mine"), "--text-encoder", str(shipped_prior),
                                    "--made-by", "python -m training.train ...", "--default"]) == 0
        shutil.rmtree(prior.parent)  # the run's own copy is gone: the published one must not need it
        published = Instant3DPipeline.from_pretrained(device="cpu")
    names = sorted(p.name for p in (checkpoints / "mine").iterdir())
    assert names == ["README.md", "config.json", "model.safetensors", "training_prompts.txt"]
    assert published("a girl wearing a crown", seed=3).notes == []  # words of the portraits set
    [note] = published("a girl riding a dragon", seed=3).notes
    assert "'riding', 'dragon'" in note and "crown" in note
    assert json.loads((checkpoints / "mine" / "config.json").read_text())["text_encoder"] == "../../priors/clip"
    assert "python -m training.train ..." in (checkpoints / "mine" / "README.md").read_text()
    a = trained("a red cube", seed=3).density(torch.zeros(5, 3))
    assert torch.equal(a, published("a red cube", seed=3).density(torch.zeros(5, 3)))


def test_clip_retrieval_scores_a_perfect_match_as_one():
    from training.evaluate import clip_retrieval

    queries = ["a", "b", "c"]
    text = torch.eye(3)
    asked = []

    class FakeOut:
        def __init__(self, k):
            self.k = k

        def render_many(self, az, el, size, shading="albedo"):
            asked.append((list(az), list(el), shading))
            img = np.zeros((size, size, 3), dtype=np.uint8)
            img[..., 0] = self.k  # encodes which prompt made it
            return [img] * len(az)

    class FakePipe:
        cache = type("C", (), {"clear": staticmethod(lambda: None)})()

        def __call__(self, prompt, seed=0):
            return FakeOut(queries.index(prompt))

    class FakeClip:
        device = "cpu"
        model = type("M", (), {"logit_scale": torch.tensor(np.log(100.0))})()

        def text_features(self, prompts):
            return text

        def image_features(self, images):
            return text[(images[:, 0, 0, 0] * 255).round().long()]

    metrics = clip_retrieval(FakePipe(), FakeClip(), ["a", "c"], queries, views=3, size=16)
    assert metrics["r_precision"] == 1.0 and metrics["retrieval_probability"] > 0.99
    assert metrics["top1"] == {"a": ["a"] * 3, "c": ["c"] * 3}
    assert asked[0] == ([45.0, 165.0, 285.0], [30.0] * 3, "lit")  # the default views: lit, off the axes
    clip_retrieval(FakePipe(), FakeClip(), ["b"], queries, views=2, size=16, elevation=15.0, azimuth_offset=0.0,
                   shading="albedo")
    assert asked[-1] == ([0.0, 180.0], [15.0] * 2, "albedo")


@pytest.mark.slow
def test_two_process_ddp_on_cpu_writes_one_checkpoint(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "training.train", "--config", str(SMOKE), f'run.output_dir="{out}"', "optim.steps=3",
           "run.checkpoint_every=100"]
    done = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    saved = _checkpoints(out)
    assert [c.name for c in saved] == ["step-0000003"]
    meta = json.loads((saved[0] / "trainer_state.json").read_text())
    assert meta["world_size"] == 2 and meta["step"] == 3


@pytest.mark.slow
def test_supervised_objective_trains_against_ground_truth_renders(tmp_path):
    from training.trainer import Trainer

    cfg = load_config(SMOKE, [f'run.output_dir="{tmp_path}"', 'objective.mode="supervised"', 'prompts.set="toyworld"',
                              "prompts.validation=[]", "optim.steps=8", "optim.lr=3e-3", "run.checkpoint_every=100",
                              "objective.depth_weight=0.1"])
    trainer = Trainer(cfg)
    assert trainer.clip is None  # no CLIP loss or Perp-Neg in the photometric objective
    gen = torch.Generator().manual_seed(0)
    first, stats = trainer.compute_loss(gen, 1.0)
    assert stats["depth_error"] > 0  # some pixels are fully covered by the object and their depth is compared
    trainer.train()
    gen = torch.Generator().manual_seed(0)
    last, _ = trainer.compute_loss(gen, 1.0)
    assert torch.isfinite(last) and last.item() < first.item()  # the same batch fits better after training
    assert [c.name for c in _checkpoints(tmp_path)] == ["step-0000008"]


@pytest.mark.slow
def test_detail_pixels_weigh_colour_and_coverage_errors(tmp_path):
    """The supervised loss against a float64 reference, with the ground truth replaced by known tensors."""
    from training.sampling import sample_views
    from training.trainer import Trainer

    cfg = load_config(SMOKE, [f'run.output_dir="{tmp_path}"', 'objective.mode="supervised"', 'prompts.set="toyworld"',
                              "prompts.validation=[]", "objective.detail_pixel_weight=4.0", "objective.mask_weight=0.5"])
    trainer = Trainer(cfg)
    res, gen = cfg.render.resolution, torch.Generator().manual_seed(1)
    truth = [(torch.rand(1, res, res, 3, generator=gen), torch.rand(1, res, res, generator=gen),
              torch.zeros(1, res, res), (torch.rand(1, res, res, generator=gen) > 0.8).float()) for _ in range(2)]
    trainer.ground_truth = lambda prompt, *args: truth[int(prompt == "b")]
    images, opacity = torch.rand(2, 3, res, res, generator=gen), torch.rand(2, res, res, generator=gen)
    views = sample_views(2, trainer.ranges, {"albedo": 1.0}, gen)
    loss, stats = trainer._photometric_loss(["a", "b"], views, images, opacity, torch.zeros(2, res, res), {})
    from instant3d.render.color import linear_to_srgb

    target = linear_to_srgb(torch.cat([t[0] for t in truth])).permute(0, 3, 1, 2).double()
    mask, detail = torch.cat([t[1] for t in truth]).double(), torch.cat([t[3] for t in truth]).double()
    colour = ((images.double() - target) ** 2).mean(dim=1)
    coverage = (opacity.double() - mask) ** 2
    expected = (colour + 4 * detail * colour).mean() + 0.5 * (coverage + 4 * detail * coverage).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert stats["detail_pixels"] == detail.sum().item()
    with pytest.raises(ValueError, match="needs objective.mode"):
        load_config(SMOKE, [f'run.output_dir="{tmp_path}"', "objective.detail_pixel_weight=1.0"])


@pytest.mark.slow
def test_the_normal_term_compares_the_field_s_normals_with_the_exact_ones(tmp_path):
    """The supervised objective's normal term against a reference computed here: 1 - cos between -grad(density
    logit) (central differences, eps 0.01, summed in float64) and the given normals at given points, for the
    prompts and planes compute_loss draws, times objective.normal_weight."""
    from training.trainer import Trainer

    def trainer(weight):
        return Trainer(load_config(SMOKE, [f'run.output_dir="{tmp_path / str(weight)}"', 'objective.mode="supervised"',
                                           'prompts.set="toyworld"', "prompts.validation=[]",
                                           f"objective.normal_weight={weight}", "objective.normal_points=5"]))

    gen = torch.Generator().manual_seed(3)
    points, normals = torch.rand(5, 3, generator=gen) - 0.5, F.normalize(torch.randn(5, 3, generator=gen), dim=-1)
    low, high = trainer(0.5), trainer(2.0)
    losses = []
    for t in (low, high):
        t.surface_normals = lambda prompt, count, generator: (points[:count], normals[:count])
        losses.append(t.compute_loss(torch.Generator().manual_seed(0), 1.0))
    (loss_low, stats_low), (loss_high, stats_high) = losses
    assert stats_low["normal_error"] == pytest.approx(stats_high["normal_error"], rel=1e-6)
    assert (loss_high - loss_low).item() == pytest.approx(1.5 * stats_low["normal_error"], rel=1e-4)

    # the reference: the same prompts and noise as compute_loss draws them first, the planes, and differences
    gen = torch.Generator().manual_seed(0)
    b = low.cfg.optim.batch_size
    prompts = [low.shard[int(i)] for i in torch.randint(len(low.shard), (b,), generator=gen)]
    z = torch.randn(b, low.model.config.generator.z_dim, generator=gen)
    with torch.no_grad():
        planes = low.model(*low.text_encoder.encode(prompts), z)
        field, eps = low.model.field, 0.01
        errors = []
        for i in range(b):
            grad = torch.zeros(5, 3, dtype=torch.float64)
            for axis in range(3):
                step = torch.zeros(3)
                step[axis] = eps
                ahead = field.density_logit(planes[i : i + 1], (points + step)[None])[0].double()
                behind = field.density_logit(planes[i : i + 1], (points - step)[None])[0].double()
                grad[:, axis] = (ahead - behind) / (2 * eps)
            errors.append(1 - (F.normalize(-grad, dim=-1) * normals.double()).sum(-1))
    assert stats_low["normal_error"] == pytest.approx(torch.cat(errors).mean().item(), rel=1e-4, abs=1e-6)
    with pytest.raises(ValueError, match="needs objective.mode"):
        load_config(SMOKE, [f'run.output_dir="{tmp_path}"', "objective.normal_weight=1.0"])
    with pytest.raises(ValueError, match="normal_weight must be >= 0"):
        load_config(SMOKE, [f'run.output_dir="{tmp_path}"', 'objective.mode="supervised"',
                            "objective.normal_weight=-1"])


@pytest.mark.slow
def test_plane_smoothness_adds_the_planes_total_variation(tmp_path):
    """objective.plane_smoothness x the planes' mean squared gap between neighbouring texels, against float64."""
    from training.trainer import Trainer

    def trainer(weight):
        return Trainer(load_config(SMOKE, [f'run.output_dir="{tmp_path / str(weight)}"', "prompts.validation=[]",
                                           'objective.mode="supervised"', 'prompts.set="toyworld"',
                                           f"objective.plane_smoothness={weight}"]))

    low, high = trainer(0.01), trainer(0.5)
    (loss_low, stats_low), (loss_high, stats_high) = (t.compute_loss(torch.Generator().manual_seed(0), 1.0)
                                                      for t in (low, high))
    assert stats_low["plane_roughness"] == pytest.approx(stats_high["plane_roughness"], rel=1e-6)
    assert (loss_high - loss_low).item() == pytest.approx(0.49 * stats_low["plane_roughness"], rel=1e-4)
    gen = torch.Generator().manual_seed(0)  # the prompts and noise compute_loss draws first
    b = low.cfg.optim.batch_size
    prompts = [low.shard[int(i)] for i in torch.randint(len(low.shard), (b,), generator=gen)]
    z = torch.randn(b, low.model.config.generator.z_dim, generator=gen)
    with torch.no_grad():
        planes = low.model(*low.text_encoder.encode(prompts), z).double()
    rows = (planes[..., 1:, :] - planes[..., :-1, :]).pow(2).mean()
    cols = (planes[..., :, 1:] - planes[..., :, :-1]).pow(2).mean()
    assert stats_low["plane_roughness"] == pytest.approx((rows + cols).item(), rel=1e-4)
    with pytest.raises(ValueError, match="plane_smoothness must be >= 0"):
        load_config(SMOKE, [f'run.output_dir="{tmp_path}"', "objective.plane_smoothness=-1"])


def test_a_prompt_set_without_exact_normals_is_refused_by_name():
    import toyworld  # noqa: F401  (registers the set that has normals, which the message lists)
    from training.prompt_sets import surface_normals_sampler

    with pytest.raises(ValueError, match="'animals' has no exact surface normals.*toyworld"):
        surface_normals_sampler("animals")
    from training.prompt_sets import ground_truth_renderer

    with pytest.raises(ValueError, match=r"'animals' has no exact scenes.*\['toyworld'\] \(or set mode = \"sds\"\)"):
        ground_truth_renderer("animals")
    assert surface_normals_sampler("toyworld") is toyworld.surface_normals


def test_lr_schedule_resumes_at_the_current_step(tmp_path):
    import math

    from training.trainer import Trainer

    def config(steps):
        return load_config(SMOKE, [f'run.output_dir="{tmp_path}"', "prompts.validation=[]", f"optim.steps={steps}",
                                   'optim.lr_schedule="cosine"', "optim.warmup_steps=1", "optim.lr=1e-3"])

    first = Trainer(config(3))
    assert first.optimizer.param_groups[0]["lr"] == 0.0  # warm-up starts from zero
    first.train()
    resumed = Trainer(config(6))  # picks up step 3 of a 6-step cosine with 1 warm-up step
    assert resumed.step == 3
    expected = 1e-3 * 0.5 * (1 + math.cos(math.pi * (3 - 1) / (6 - 1)))
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        load_config(SMOKE, ['optim.lr_schedule="cosinus"'])
    with pytest.raises(ValueError, match="needs a schedule with warm-up"):
        load_config(SMOKE, ["optim.warmup_steps=10"])


def test_an_sds_run_with_asd_and_annealed_timesteps(tmp_path):
    """The estimator and the annealing reach the guidance from the config, and the run trains: t_max falls
    linearly from prior.t_max to prior.t_max_final over the run; bad values are refused before anything loads."""
    from training.trainer import Trainer

    trainer = Trainer(load_config(SMOKE, [f'run.output_dir="{tmp_path}"', "prompts.validation=[]", "optim.steps=4",
                                          'prior.estimator="asd"', "prior.t_max_final=0.5"]))
    assert trainer.guidance.estimator == "asd"
    assert trainer.annealed_t_max() == pytest.approx(trainer.cfg.prior.t_max)
    trainer.step = 2
    assert trainer.annealed_t_max() == pytest.approx((trainer.cfg.prior.t_max + 0.5) / 2)
    trainer.step = 0
    trainer.train()
    assert trainer.step == 4
    with pytest.raises(ValueError, match="prior.t_max_final must lie in"):
        load_config(SMOKE, ["prior.t_max_final=0.01"])
    with pytest.raises(ValueError, match="prior.estimator must be one of"):
        load_config(SMOKE, ['prior.estimator="vsd"'])


def test_opacity_entropy_matches_the_binary_entropy_in_float64(tmp_path):
    from training.trainer import Trainer

    trainer = Trainer(load_config(SMOKE, [f'run.output_dir="{tmp_path}"', "prompts.validation=[]",
                                          "objective.opacity_entropy=2.0", "objective.opacity_sparsity=0.5",
                                          "objective.depth_variance=3.0"]))
    opacity = torch.tensor([[0.0, 0.5, 0.9, 1.0]])
    variance = torch.tensor([[0.0, 0.1, 0.2, 0.3]])
    stats = {}
    value = trainer._opacity_terms(opacity, variance, stats)
    p = np.clip(np.array([0.0, 0.5, 0.9, 1.0], dtype=np.float64), 1e-5, 1 - 1e-5)
    entropy = float(np.mean(-(p * np.log(p) + (1 - p) * np.log(1 - p))))
    assert stats["opacity_entropy"] == pytest.approx(entropy, rel=1e-4)
    variance_of_solid_rays = (0.2 / 0.9 + 0.3 / 1.0) / 2  # rays at most half opaque are left out, the rest normalised
    assert stats["depth_variance"] == pytest.approx(variance_of_solid_rays, rel=1e-6)
    assert value.item() == pytest.approx(2.0 * entropy + 0.5 * 0.6 + 3.0 * variance_of_solid_rays, rel=1e-4)


def test_the_generator_can_be_conditioned_on_another_text_encoder_than_the_priors(tmp_path):
    """model.text_encoder: the generator reads that folder's tokens (here a 48-wide random CLIP text tower against
    the smoke prior's 32-wide one), and its checkpoint references that folder, not the prior's."""
    from instant3d import Instant3DPipeline
    from instant3d.testing.random_models import save_random_clip_text

    own = save_random_clip_text(tmp_path / "own-text", layout="sd", hidden=48, max_length=20, seed=5)
    out = tmp_path / "run"
    done = subprocess.run(_train_cmd(out, "optim.steps=2", f'model.text_encoder="{own}"'), cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    pipe = Instant3DPipeline.from_pretrained(_checkpoints(out)[-1], device="cpu")
    assert Path(pipe.text_encoder.folder).resolve() == own.resolve()
    assert (pipe.text_encoder.max_length, pipe.text_encoder.token_dim) == (20, 48)
    assert pipe("a red cube").render(0, 15, size=16).shape == (16, 16, 3)


def test_model_upsampling_reaches_new_models_and_fine_tuned_checkpoints(tmp_path):
    """model.upsampling: a fresh tiny model is built with it, and a checkpoint fine-tuned with the other mode keeps
    its weights' names and shapes (upsampling has none) and saves the new mode in its config.json."""
    from instant3d.config import preset_config
    from instant3d.io.checkpoint import load_model

    stages = len(preset_config(load_config(SMOKE).model.preset).generator.block_out_channels)
    bilinear = "[" + ",".join(['"bilinear"'] * stages) + "]"
    first, second = tmp_path / "first", tmp_path / "second"
    done = subprocess.run(_train_cmd(first, "optim.steps=1", "run.checkpoint_every=1", f"model.upsampling={bilinear}"),
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    start, _ = load_model(_checkpoints(first)[-1])
    assert start.config.generator.upsampling == ("bilinear",) * stages
    nearest = "[" + ",".join(['"nearest"'] * stages) + "]"
    done = subprocess.run(_train_cmd(second, "optim.steps=1", "run.checkpoint_every=1", f"model.upsampling={nearest}",
                                     f'model.init_checkpoint="{_checkpoints(first)[-1]}"'),
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    tuned, _ = load_model(_checkpoints(second)[-1])
    assert tuned.config.generator.upsampling == ("nearest",) * stages
    assert {k: v.shape for k, v in tuned.state_dict().items()} == {k: v.shape for k, v in start.state_dict().items()}


def test_block_mean_is_the_average_pool_of_a_supersampled_render():
    from training.trainer import block_mean

    gen = torch.Generator().manual_seed(0)
    colour, opacity = torch.rand(2, 8 * 8, 3, generator=gen), torch.rand(2, 8 * 8, generator=gen)
    want = F.avg_pool2d(colour.view(2, 8, 8, 3).permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1).reshape(2, 16, 3)
    assert torch.allclose(block_mean(colour, 2, 4, 2), want, atol=1e-7)
    assert torch.allclose(block_mean(opacity, 2, 4, 2), F.avg_pool2d(opacity.view(2, 1, 8, 8), 2).reshape(2, 16))
    assert block_mean(opacity, 2, 8, 1) is opacity
    for bad in ("0", "5", "true", "1.5"):
        with pytest.raises(ValueError, match="render.supersample"):
            load_config(SMOKE, [f"render.supersample={bad}"])


def test_supersampled_training_renders_reach_the_prior_at_the_training_resolution(tmp_path):
    from training.trainer import Trainer

    cfg = load_config(SMOKE, [f'run.output_dir="{tmp_path}"', "prompts.validation=[]", "render.supersample=2",
                              "objective.depth_variance=10.0"])
    trainer = Trainer(cfg)
    seen, real_sds = [], trainer.guidance.sds

    def spy(images, *args, **kwargs):
        seen.append(images.shape)
        return real_sds(images, *args, **kwargs)

    trainer.guidance.sds = spy
    loss, stats = trainer.compute_loss(torch.Generator().manual_seed(0), 1.0)
    res, b = cfg.render.resolution, cfg.optim.batch_size
    assert seen == [torch.Size([b, 3, res, res])] and torch.isfinite(loss)
    assert "depth_variance" in stats  # the per-ray regulariser ran on the 2x2 rays of each pixel
    supervised = Trainer(load_config(SMOKE, [f'run.output_dir="{tmp_path / "supervised"}"', "prompts.validation=[]",
                                             "render.supersample=2", 'objective.mode="supervised"',
                                             'prompts.set="toyworld"', "objective.depth_weight=0.1"]))
    loss, stats = supervised.compute_loss(torch.Generator().manual_seed(0), 1.0)
    assert torch.isfinite(loss) and stats["depth_error"] > 0  # colour, coverage and depth compared at res x res
