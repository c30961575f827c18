"""The diffusion prior's recipe pieces, its probes and its evaluation command, on tiny models and mocks."""

import types

import pytest
import torch

from training.guidance import DiffusionGuidance
from instant3d.testing.random_priors import save_random_prior
from toyworld.prior_probe import (ProbeImage, attribute_alternatives, candidate_sets, denoising_errors,
                                           diffusion_classifier, prompt_fields)
from toyworld.prior_train import build_scheduler, denoising_loss, min_snr_weights


def test_prompt_fields_and_one_attribute_alternatives():
    assert prompt_fields("a small red cube") == ("single", {"size": "small", "colour": "red", "shape": "cube"})
    assert prompt_fields("a white duck with an orange beak") == ("front", {"colour": "white", "shape": "duck"})
    alt = attribute_alternatives("a red cube")
    assert len(alt["colour"]) == 9 and "a blue cube" in alt["colour"]
    assert len(alt["shape"]) == 5 and "a red torus" in alt["shape"]
    assert sorted(alt["size"]) == ["a large red cube", "a small red cube"] and alt["binding"] == []
    stack = attribute_alternatives("a red cube on top of a blue sphere")
    assert stack["binding"] == ["a blue cube on top of a red sphere"]
    # stacks never repeat a colour: 4 other top colours and 4 other base colours
    assert len(stack["colour"]) == 8 and "a blue cube on top of a blue sphere" not in stack["colour"]
    assert "a red cube on top of a blue cylinder" in stack["shape"]
    front = attribute_alternatives("a white snowman with a carrot nose")
    assert "a white duck with an orange beak" in front["shape"] and len(front["colour"]) == 9


def test_candidate_sets_put_the_true_caption_first_and_vary_one_thing():
    item = ProbeImage(torch.zeros(3, 8, 8), "a white snowman with a carrot nose", "front")
    sets = candidate_sets(item, ("colour", "view"))
    assert sets["view"] == ["a white snowman with a carrot nose, front view",
                            "a white snowman with a carrot nose, side view",
                            "a white snowman with a carrot nose, back view"]
    assert sets["colour"][0] == sets["view"][0] and all(c.endswith(", front view") for c in sets["colour"])


class _Encoder:
    """Captions -> one-hot-ish token rows, so a mock UNet can tell which caption it was given."""

    def __init__(self, captions):
        self.index = {c: i for i, c in enumerate(captions)}

    def encode(self, captions):
        tokens = torch.zeros(len(captions), 1, 1)
        tokens[:, 0, 0] = torch.tensor([float(self.index[c]) for c in captions])
        return tokens, None


def _mock_guidance(captions, true_caption_error, other_error):
    """predict_noise returns the true noise plus a caption-dependent offset: a perfect classifier by design."""
    scheduler = build_scheduler()
    guidance = types.SimpleNamespace(alphas_cumprod=scheduler.alphas_cumprod, device=torch.device("cpu"),
                                     text_encoder=_Encoder(captions),
                                     encode_images=lambda images: images * 2 - 1)
    truth = {i for c, i in guidance.text_encoder.index.items() if "red cube, front" in c}

    def predict_noise(x_t, t, emb, cameras=None):
        abar = guidance.alphas_cumprod[t].view(-1, 1, 1, 1)
        x0 = guidance.encode_images(guidance.image)
        eps = (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()  # the exact noise
        offset = torch.tensor([true_caption_error if int(e) in truth else other_error for e in emb[:, 0, 0]])
        return eps + offset.view(-1, 1, 1, 1)

    guidance.predict_noise = predict_noise
    return guidance


def test_diffusion_classifier_picks_the_caption_with_the_lowest_denoising_error():
    item = ProbeImage(torch.rand(3, 8, 8), "a red cube", "front")
    captions = sorted({c for s in candidate_sets(item).values() for c in s})
    good = _mock_guidance(captions, 0.0, 0.3)
    good.image = item.image[None]
    acc = diffusion_classifier(good, [item], timesteps=(100, 500))
    assert acc["colour"] == acc["shape"] == acc["size"] == acc["view"] == acc["all"] == 1.0
    bad = _mock_guidance(captions, 0.5, 0.1)  # the true caption denoises worst
    bad.image = item.image[None]
    assert diffusion_classifier(bad, [item], timesteps=(100, 500))["all"] == 0.0
    # the errors themselves: (offset)^2 per timestep, summed over timesteps (independent closed form)
    errors = denoising_errors(good, item.image[None], [captions], [100, 500])[0]
    expected = torch.tensor([0.0 if "red cube, front" in c else 2 * 0.3 ** 2 for c in captions])
    assert torch.allclose(errors, expected, atol=1e-5)


def test_denoising_errors_match_a_direct_loop_on_a_real_unet(tmp_path):
    folder = save_random_prior(tmp_path / "prior", latent=False, sample_size=8)
    guidance = DiffusionGuidance.from_folder(folder, perp_neg="none")
    images = torch.rand(2, 3, 8, 8)
    captions = [["a red cube", "a blue cube"], ["a red cube on top of a blue sphere"]]
    got = denoising_errors(guidance, images, captions, [200, 700], seed=3, batch=3)
    gen = torch.Generator().manual_seed(3)
    noise = torch.randn(2, 2, 3, 8, 8, generator=gen)
    for i, caps in enumerate(captions):
        for c, text in enumerate(caps):
            total = 0.0
            for k, t in enumerate([200, 700]):
                abar = guidance.alphas_cumprod[t]
                x_t = abar.sqrt() * (images[i : i + 1] * 2 - 1) + (1 - abar).sqrt() * noise[i, k : k + 1]
                emb, _ = guidance.text_encoder.encode([text])
                eps = guidance.unet(x_t, torch.tensor([t]), encoder_hidden_states=emb).sample
                total += float((eps - noise[i, k : k + 1]).pow(2).mean())
            assert got[i][c].item() == pytest.approx(total, rel=1e-4)


def test_min_snr_weights_follow_their_closed_form():
    abar = torch.tensor([0.99, 0.5, 0.01])
    snr = abar / (1 - abar)  # 99, 1, 1/99
    t = torch.arange(3)
    v = min_snr_weights(abar, t, 5.0, "v_prediction")
    eps = min_snr_weights(abar, t, 5.0, "epsilon")
    assert torch.allclose(v, torch.tensor([5 / 100, 1 / 2, (1 / 99) / (1 / 99 + 1)]))
    assert torch.allclose(eps, torch.tensor([5 / 99, 1.0, 1.0]))
    assert torch.allclose(v, torch.minimum(snr, torch.tensor(5.0)) / (snr + 1))


def test_the_recipes_scheduler_predicts_v_on_the_cosine_schedule_and_guidance_converts_it():
    s = build_scheduler()
    assert s.config.prediction_type == "v_prediction" and s.config.beta_schedule == "squaredcos_cap_v2"
    x, noise, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.tensor([10, 900])
    v = s.get_velocity(x, noise, t)
    x_t = s.add_noise(x, noise, t)
    guidance = types.SimpleNamespace(alphas_cumprod=s.alphas_cumprod, prediction_type="v_prediction",
                                     dtype=torch.float32, device=torch.device("cpu"), camera_conditioned=False,
                                     unet=lambda x_t, t, encoder_hidden_states: types.SimpleNamespace(sample=v))
    eps = DiffusionGuidance.predict_noise(guidance, x_t, t, torch.zeros(2, 1, 1))
    assert torch.allclose(eps, noise, atol=1e-4)  # the SDS code sees epsilon, whatever the prior predicts


def test_hard_pairs_differ_only_in_view_or_in_colour_binding():
    from toyworld.clip_train import HardPairs
    from toyworld.dataset import render_set, view_label

    prompts = ["a white snowman with a carrot nose", "a red cube on top of a blue sphere",
               "a blue cube on top of a red sphere", "a green cone"]
    data = render_set(prompts, 12, 8, seed=0, shading={"albedo": 1.0})
    pairs = HardPairs(data, prompts).draw(4, torch.Generator().manual_seed(0))
    assert len(pairs) == 8
    for (i, first), (j, second) in zip(pairs[::2], pairs[1::2]):
        if first.endswith(" view"):  # the same object from the front and from the back, captioned so
            assert first == f"{prompts[0]}, front view" and second == f"{prompts[0]}, back view"
            assert view_label(float(data.azimuth[i]), float(data.elevation[i])) == "front"
            assert view_label(float(data.azimuth[j]), float(data.elevation[j])) == "back"
        else:  # a stack and the same stack with its colours swapped, each with an image of its own
            assert {first, second} == set(prompts[1:3])
            assert prompts[int(data.prompt_index[i])] == first and prompts[int(data.prompt_index[j])] == second
    assert sum(p[1].endswith(" view") for p in pairs) == 4  # half of each kind


def test_rendered_sets_mark_the_small_parts_on_both_sides_and_old_caches_are_rerendered(tmp_path):
    from toyworld.dataset import cached_set, load_set, save_set, view_label

    prompts = ["a white snowman with a carrot nose", "a red cube"]
    data = cached_set(tmp_path / "set.safetensors", prompts, 12, 16, seed=0, shading={"albedo": 1.0})
    covered = data.detail.float().sum(dim=(1, 2)) / 255
    snowman = data.prompt_index == 0
    assert (covered[~snowman] == 0).all()  # a cube has no named parts
    labels = [view_label(float(a), float(e)) for a, e in zip(data.azimuth, data.elevation)]
    for side in ("front", "back"):  # the nose in front, what lies in line with it behind
        chosen = [i for i in range(len(labels)) if labels[i] == side and snowman[i]]
        assert chosen and all(covered[i] > 0 for i in chosen), side
    assert (covered[snowman] < 0.2 * 16 * 16).all()  # small parts, not the body
    # a set cached before the coverage was kept loads as it is, unless the coverage is needed
    data.detail = None
    save_set(data, tmp_path / "set.safetensors")
    assert cached_set(tmp_path / "set.safetensors", prompts, 12, 16, seed=0, shading={"albedo": 1.0}).detail is None
    again = cached_set(tmp_path / "set.safetensors", prompts, 12, 16, seed=0, shading={"albedo": 1.0},
                       need_detail=True)
    assert again.detail is not None and torch.equal(again.images, data.images)
    assert load_set(tmp_path / "set.safetensors").detail is not None


def test_the_denoising_loss_weights_the_parts_pixels_as_a_direct_loop_does():
    gen = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 3, 4, 4, generator=gen), torch.randn(2, 3, 4, 4, generator=gen)
    detail = torch.zeros(2, 4, 4)
    detail[0, 1, 2], detail[1, 3, 3] = 1.0, 0.5
    loss = denoising_loss(pred, target, detail, 10.0)
    for b in range(2):  # float64 loop over pixels
        total = 0.0
        for y in range(4):
            for x in range(4):
                err = sum((float(pred[b, c, y, x]) - float(target[b, c, y, x])) ** 2 for c in range(3)) / 3
                total += err * (1 + 10.0 * float(detail[b, y, x]))
        assert abs(float(loss[b]) - total / 16) < 1e-5
    plain = torch.nn.functional.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
    assert torch.allclose(denoising_loss(pred, target, detail, 0.0), plain)
    assert torch.allclose(denoising_loss(pred, target, None, 10.0), plain)
    assert (loss > plain).all()


def test_an_unreadable_run_state_stops_the_run_instead_of_restarting_it(tmp_path):
    from training.state import RunStateError, load_run_state, save_run_state

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    assert load_run_state(tmp_path / "state", {"m": model}, optimizer) is None  # nothing yet: a fresh run
    save_run_state(tmp_path / "state", {"m": model}, optimizer, 7)
    assert load_run_state(tmp_path / "state", {"m": model}, optimizer)["step"] == 7
    (tmp_path / "state" / "state.safetensors").write_bytes(b"truncated")
    with pytest.raises(RunStateError, match="cannot be read"):
        load_run_state(tmp_path / "state", {"m": model}, optimizer)


def test_stale_temporaries_of_interrupted_saves_are_removed_and_nothing_else(tmp_path):
    import os

    from instant3d.io.files import atomic_folder, remove_stale_temporaries

    with atomic_folder(tmp_path / "export") as tmp:
        (tmp / "a.txt").write_text("x")
    (tmp_path / ".export.abc123.tmp").mkdir()  # a save killed before its rename
    (tmp_path / ".export.old-999999999").mkdir()  # a swap whose process is gone
    (tmp_path / f".export.old-{os.getpid()}").mkdir()  # a swap still in progress (this process): kept
    (tmp_path / ".other.x.tmp").mkdir()  # another target's: kept when a name is given
    removed = remove_stale_temporaries(tmp_path, "export")
    assert sorted(p.name for p in removed) == [".export.abc123.tmp", ".export.old-999999999"]
    assert (tmp_path / "export" / "a.txt").read_text() == "x" and (tmp_path / ".other.x.tmp").exists()
    assert (tmp_path / f".export.old-{os.getpid()}").exists()


def test_prior_eval_prints_its_table_and_writes_the_grid(tmp_path, monkeypatch, capsys):
    """The evaluation command end to end on a tiny random prior and CLIP (the view judge swapped for an untrained
    one, to keep it quick): every row is printed, the numbers are shares, the grid has one tile per prompt x view."""
    import json

    from PIL import Image

    from instant3d.testing.random_priors import save_random_clip
    from toyworld import prior_eval
    from toyworld.view_judge import ViewJudge

    prior = save_random_prior(tmp_path / "prior", latent=False, sample_size=16)
    clip = save_random_clip(tmp_path / "clip")
    monkeypatch.setattr(prior_eval, "train_view_judge", lambda size: (ViewJudge().eval(), 0.5))
    grid, report = tmp_path / "grid.png", tmp_path / "report.json"
    assert prior_eval.main(["--prior", str(prior), "--clip", str(clip), "--limit", "3", "--view-limit", "2",
                            "--cfg", "1.5", "3", "--samples", "1", "--steps", "2", "--grid", str(grid),
                            "--grid-cfg", "3", "--output", str(report)]) == 0
    out = capsys.readouterr().out
    assert out.count("| held-out | ") == 4 and out.count("| train | ") == 4  # ground truth, 2 CFGs, classifier
    rows = json.loads(report.read_text())["rows"]
    assert all(0 <= r["r_precision"] <= 1 for r in rows)
    assert [r["view_accuracy"] for r in rows if "view_accuracy" in r] == [r["view_accuracy"] for r in rows[1:3]]
    assert all(0 <= r["view_accuracy"] <= 1 for r in rows if "view_accuracy" in r)
    for r in (r for r in rows if "view_accuracy" in r):  # the overall share is the mean of the two sides'
        assert abs(r["view_accuracy"] - (r["view_front"] + r["view_back"]) / 2) < 1e-9
    image = Image.open(grid)
    assert image.size == (300 + 2 * 16 * 3, 36 + len(prior_eval.GRID_PROMPTS) * 16 * 3)
    assert prior_eval.main(["--prior", str(prior), "--clip", str(clip), "--view-limit", "2", "--cfg", "3",
                            "--samples", "1", "--steps", "2", "--grid", "", "--views-only", "--perp-neg",
                            "--output", str(report)]) == 0
    assert capsys.readouterr().out.count("| held-out | 3, Perp-Neg views |") == 1
    rows = json.loads(report.read_text())["rows"]
    assert [r.get("perp_neg", False) for r in rows] == [False, True]
    assert all(abs(r["view_accuracy"] - (r["view_front"] + r["view_back"]) / 2) < 1e-9 for r in rows)


def test_perp_neg_samples_are_guided_as_sds_guides_a_back_view(tmp_path):
    """At azimuth 180 the back caption is the positive, and "front" (weight 1.967) and "side" (0.394) are pushed
    away along their components orthogonal to it: checked against a float64 reference built from single UNet
    calls."""
    from toyworld import prior_eval

    guidance = DiffusionGuidance.from_folder(save_random_prior(tmp_path / "prior", latent=False, sample_size=16),
                                             perp_neg="none")
    prompts = ["a red cube", "a white snowman with a carrot nose"]
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    t, cfg = torch.tensor(500), 3.0
    got = prior_eval._perp_neg_step(guidance, x, t, prompts, 180.0, cfg)

    def eps(texts):
        tokens, _ = guidance.text_encoder.encode(texts)
        return guidance.predict_noise(x, torch.full((2,), 500), tokens).double()

    _, uncond = guidance.view_embeddings(prompts[:1])
    u = guidance.predict_noise(x, torch.full((2,), 500), uncond.expand(2, *uncond.shape)).double()
    pos = eps([p + ", back view" for p in prompts]) - u
    total = pos.clone()
    for view, weight in ((", side view", 1 - 0.606), (", front view", 1 + 0.967)):
        neg = eps([p + view for p in prompts]) - u
        along = (neg * pos).sum(dim=(1, 2, 3), keepdim=True) / (pos * pos).sum(dim=(1, 2, 3), keepdim=True)
        total -= weight * (neg - along * pos)
    expected = u + cfg * total
    assert torch.allclose(got.double(), expected, atol=1e-4 * expected.abs().max().item())
    assert not torch.allclose(got.double(), u + cfg * pos, atol=1e-3)  # the negatives did change it


def test_camera_features_are_the_sines_and_cosines_of_the_angles():
    from training.guidance import camera_features

    got = camera_features(torch.tensor([0.0, 90.0, 180.0]), torch.tensor([0.0, 30.0, -90.0]))
    want = torch.tensor([[0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 0.5, 3 ** 0.5 / 2], [0.0, -1.0, -1.0, 0.0]])
    assert torch.allclose(got, want, atol=1e-6)


def test_a_camera_arm_continues_a_plain_prior_exactly_and_then_listens_to_the_camera():
    from training.guidance import PriorError
    from toyworld.prior_train import build_unet, load_adding_camera

    torch.manual_seed(0)
    plain, with_camera = build_unet(16, 8), build_unet(16, 8, camera=True)
    load_adding_camera(with_camera, plain)
    x, t, tokens = torch.randn(2, 3, 8, 8), torch.tensor([100, 600]), torch.randn(2, 4, 16)
    guidance = DiffusionGuidance(with_camera, build_scheduler(), None, perp_neg="none")
    plain_guidance = DiffusionGuidance(plain, build_scheduler(), None, perp_neg="none")
    assert guidance.camera_conditioned and not plain_guidance.camera_conditioned
    front, back = torch.tensor([[0.0, 15.0]] * 2), torch.tensor([[180.0, 15.0]] * 2)
    reference = plain_guidance.predict_noise(x, t, tokens)
    assert torch.allclose(guidance.predict_noise(x, t, tokens, front), reference, atol=1e-5)
    assert torch.allclose(guidance.predict_noise(x, t, tokens, back), reference, atol=1e-5)
    with pytest.raises(PriorError, match="camera-conditioned: pass the cameras"):
        guidance.predict_noise(x, t, tokens)
    torch.nn.init.normal_(with_camera.class_embedding.linear_2.weight)  # as training moves it off zero
    assert not torch.allclose(guidance.predict_noise(x, t, tokens, front), guidance.predict_noise(x, t, tokens, back),
                              atol=1e-3)
    with pytest.raises(RuntimeError, match="cannot continue"):  # a camera arm's weights do not go into a plain run
        load_adding_camera(build_unet(16, 8), with_camera)


def test_the_64_pixel_prior_adds_a_level_in_front_and_keeps_the_text_attended_at_16_and_8_pixels():
    from toyworld.prior_train import build_unet

    small, large = build_unet(16, 32), build_unet(16, 64)
    assert small.config.block_out_channels == (32, 64, 128)
    assert large.config.block_out_channels == (32, 64, 128, 128)
    attended = {"small": [], "large": []}
    for name, unet, size in (("small", small, 32), ("large", large, 64)):
        for block in unet.down_blocks:
            if getattr(block, "has_cross_attention", False):
                attended[name].append(size)
            size //= 2 if block.downsamplers else 1
    assert attended == {"small": [16, 8], "large": [16, 8]}
    out = large(torch.randn(1, 3, 64, 64), torch.tensor([10]), encoder_hidden_states=torch.randn(1, 4, 16)).sample
    assert out.shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="divisible by 8"):
        build_unet(16, 68)


def test_the_view_judge_sees_a_larger_prior_s_samples_at_its_own_size():
    import torch.nn.functional as F

    from toyworld.view_judge import ViewJudge, judged_front

    torch.manual_seed(0)
    judge = ViewJudge(size=16).eval()
    torch.nn.init.normal_(judge.head.weight, std=5.0)  # a head far from zero, so its answers depend on the image
    images = torch.rand(8, 3, 64, 64)
    small = F.interpolate(images, size=(16, 16), mode="bilinear", antialias=True, align_corners=False)
    assert torch.equal(judged_front(judge, images), judge(small).argmax(-1) == 0)
    assert torch.equal(judged_front(judge, small), judged_front(judge, images))


def test_the_prior_trainer_refuses_a_device_it_cannot_use_before_rendering_anything(tmp_path):
    from toyworld import prior_train

    assert prior_train.training_device("cpu") == torch.device("cpu")
    for name, message in (("bogus", "not a torch device name"), ("mps", "only cpu and cuda")):
        with pytest.raises(SystemExit, match=message):
            prior_train.main(["--clip", "x", "--out", str(tmp_path / "p"), "--work", str(tmp_path / "w"),
                              "--device", name])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="no CUDA device; install the CUDA build"):
            prior_train.main(["--clip", "x", "--out", str(tmp_path / "p"), "--work", str(tmp_path / "w"),
                              "--device", "cuda"])
    assert not (tmp_path / "w").exists()  # refused before the data cache was started


@pytest.mark.skipif(not torch.cuda.is_available(), reason="trains on a CUDA device; runs where one is present")
def test_the_prior_trains_and_probes_on_cuda_and_resumes_on_the_cpu(tmp_path):
    import json

    from toyworld import prior_train

    common = ["--clip", "assets/priors/toy-clip-views", "--out", str(tmp_path / "prior"), "--work",
              str(tmp_path / "work"), "--batch", "4", "--views", "1", "--size", "16", "--save-every", "1",
              "--max-prompts", "8", "--probe", "4"]
    assert prior_train.main([*common, "--steps", "2", "--device", "cuda"]) == 0
    assert prior_train.main([*common, "--steps", "3", "--device", "cpu"]) == 0
    progress = json.loads((tmp_path / "prior" / "progress.json").read_text())
    assert progress["step"] == 3 and len(progress["history"]) == 3
