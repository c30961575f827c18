"""The albedo-head calibration (toyworld/colour_calibration.py), run for a few steps on the bundled default."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from instant3d.io.checkpoint import CheckpointError, load_model
from instant3d.models.field import scaled_sigmoid
from instant3d.pipeline import Instant3DPipeline
from instant3d.render.color import linear_to_srgb
from toyworld import colour_calibration
from toyworld.metrics import PALETTE, colour_names, surface_points
from toyworld.scenes import prompt_split, scene_for_prompt

SOURCE = "assets/checkpoints/toyworld-supervised-details"


def test_the_palette_loss_prefers_the_true_colour_s_name_and_vanishes_at_the_truth():
    truth = PALETTE[:3]
    assert float(colour_calibration.calibration_loss(truth, truth, 0.0)) == 0.0
    exact = float(colour_calibration.calibration_loss(truth, truth, 0.01))
    wrong = float(colour_calibration.calibration_loss(PALETTE[3:6], truth, 0.01))
    assert exact < 0.1 < wrong
    # the cross-entropy term by hand for one point
    shown = linear_to_srgb(PALETTE[:1])
    logits = -((shown - linear_to_srgb(PALETTE)) ** 2).sum(-1) / 0.01
    want = float(-torch.log_softmax(logits, -1)[int(colour_names(PALETTE[:1]))])
    assert float(colour_calibration.calibration_loss(PALETTE[:1], PALETTE[:1], 0.01)) == pytest.approx(want, abs=1e-5)


def test_calibration_changes_only_the_albedo_rows_and_the_checkpoint_shows_the_fitted_head(tmp_path):
    out = tmp_path / "calibrated"
    assert colour_calibration.main(["--checkpoint", SOURCE, "--out", str(out), "--seeds", "1", "--points", "50",
                                    "--steps", "30", "--limit", "4"]) == 0
    before, after = load_file(f"{SOURCE}/model.safetensors"), load_file(out / "model.safetensors")
    last = max(k for k in before if k.startswith("field.layers.") and k.endswith(".weight"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {last, last.replace(".weight", ".bias")}
    assert torch.equal(before[last][0], after[last][0])  # the density row stays
    record = json.loads((out / "config.json").read_text())["colour_calibration"]
    assert record["prompts"] == 4 and record["points"] <= 200 and record["steps"] == 30
    assert record["after"]["srgb_error"] > 0 and 0 <= record["after"]["naming_accuracy"] <= 1

    # the saved checkpoint's albedo is scaled_sigmoid(hidden @ W.T + b) with the stored rows x the layer's gain,
    # at points of our own choosing, the hidden activations computed here by hand
    model, _ = load_model(out)
    pipe = Instant3DPipeline.from_pretrained(out)
    prompt = prompt_split()[0][0]
    result = pipe(prompt, seed=0)
    points = surface_points(scene_for_prompt(prompt), 48, result.bound)[::7][:40]
    field = model.field
    hidden = field.aggregate(field.plane_features(result.triplane, points[None]))[0]
    hidden = torch.nn.functional.softplus(hidden @ (field.layers[0].weight * field.layers[0].gain).T
                                          + field.layers[0].bias)
    w = after[last][1:] * field.layers[-1].gain
    want = scaled_sigmoid(hidden @ w.T + after[last.replace(".weight", ".bias")][1:], field.cfg.albedo_alpha)
    with torch.no_grad():
        assert torch.allclose(result.albedo(points).cpu(), want.clamp(0, 1), atol=1e-5)


def test_the_fitted_rows_are_what_the_field_then_uses():
    model, _ = load_model(SOURCE)
    last = model.field.layers[-1]
    weight, bias = torch.randn(3, last.weight.shape[1]), torch.randn(3)
    density_row = last.weight[0].clone()
    colour_calibration.write_albedo_head(model.field, weight, bias)
    assert torch.allclose(last.effective_weight()[1:], weight, atol=1e-6)
    assert torch.equal(last.bias[1:], bias) and torch.equal(last.weight[0], density_row)


def test_fitting_lowers_the_loss_it_fits_on_its_points():
    model, _ = load_model(SOURCE)
    pipe = Instant3DPipeline.from_pretrained(SOURCE)
    samples = colour_calibration.surface_samples(pipe, prompt_split()[0][:6], 1, 60)
    alpha, last = model.field.cfg.albedo_alpha, model.field.layers[-1]
    start = colour_calibration.calibration_loss(
        colour_calibration.head_albedo(samples.hidden, last.effective_weight()[1:], last.bias[1:], alpha),
        samples.truth, 0.01)
    weight, bias, stats = colour_calibration.fit_albedo_head(model.field, samples, 40, 0.01)
    end = colour_calibration.calibration_loss(colour_calibration.head_albedo(samples.hidden, weight, bias, alpha),
                                              samples.truth, 0.01)
    assert float(end.detach()) < float(start.detach())
    assert set(stats) == {"before", "after"}


def test_calibration_refuses_to_overwrite_its_input(tmp_path):
    with pytest.raises(CheckpointError, match="new folder"):
        colour_calibration.main(["--checkpoint", SOURCE, "--out", SOURCE])
    (tmp_path / "notes").mkdir()
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        colour_calibration.main(["--checkpoint", SOURCE, "--out", str(tmp_path / "notes")])


def test_calibration_refuses_a_head_it_does_not_model():
    model, _ = load_model(SOURCE)
    model.field.cfg.albedo_activation = "padded_sigmoid"
    with pytest.raises(CheckpointError, match="scaled-sigmoid"):
        colour_calibration.check_calibratable(model.field)
    model.field.cfg.albedo_activation, model.field.cfg.albedo_space = "scaled_sigmoid", "display"
    with pytest.raises(CheckpointError, match="linear albedo"):
        colour_calibration.check_calibratable(model.field)


def test_point_weights_and_balancing_match_a_by_hand_loop():
    torch.manual_seed(0)
    truth = PALETTE[torch.tensor([0, 0, 1, 2, 2, 2])]
    shown = (truth + 0.1 * torch.randn_like(truth)).clamp(0, 1)
    weight = torch.tensor([1.0, 5.0, 1.0, 2.0, 1.0, 11.0])
    s_shown, s_truth = linear_to_srgb(shown).double(), linear_to_srgb(truth).double()
    palette, names = linear_to_srgb(PALETTE).double(), colour_names(truth)
    for balanced in (False, True):
        totals = {}
        for n, w in zip(names.tolist(), weight.tolist()):
            totals[n] = totals.get(n, 0.0) + w
        num_abs = num_ce = den_ce = 0.0
        for i in range(len(truth)):
            num_abs += weight[i].item() * (s_shown[i] - s_truth[i]).abs().mean().item()
            logits = -((s_shown[i] - palette) ** 2).sum(-1) / 0.01
            ce = -torch.log_softmax(logits, -1)[names[i]].item()
            w_ce = weight[i].item() / (totals[names[i].item()] if balanced else 1.0)
            num_ce += w_ce * ce
            den_ce += w_ce
        want = num_abs / weight.sum().item() + num_ce / den_ce
        got = float(colour_calibration.calibration_loss(shown, truth, 0.01, balanced, weight))
        assert got == pytest.approx(want, rel=1e-4)
    # unit weights are the unweighted loss it had before: the plain mean and cross-entropy, and for balanced,
    # torch's class-weighted cross-entropy with 1 / count
    logits = -torch.cdist(s_shown.float(), palette.float()).pow(2) / 0.01
    plain = (s_shown - s_truth).abs().mean().item() + F.cross_entropy(logits, names).item()
    counts = torch.bincount(names, minlength=len(PALETTE)).float()
    by_class = (s_shown - s_truth).abs().mean().item() + F.cross_entropy(
        logits, names, weight=torch.where(counts > 0, 1 / counts.clamp(min=1), 0.0)).item()
    assert float(colour_calibration.calibration_loss(shown, truth, 0.01, False, torch.ones(6))) == pytest.approx(
        plain, rel=1e-5)
    assert float(colour_calibration.calibration_loss(shown, truth, 0.01, True, torch.ones(6))) == pytest.approx(
        by_class, rel=1e-5)


def test_colour_casts_are_each_true_colour_s_weighted_mean_signed_error_and_the_loss_adds_the_worst():
    torch.manual_seed(1)
    truth = PALETTE[torch.tensor([0, 0, 1, 2, 2, 2])]
    shown = (truth + 0.1 * torch.randn_like(truth)).clamp(0, 1)
    weight = torch.tensor([1.0, 5.0, 1.0, 2.0, 1.0, 11.0])
    s_shown, s_truth, names = linear_to_srgb(shown), linear_to_srgb(truth), colour_names(truth)
    by_hand = []
    for name in sorted(set(names.tolist())):
        rows = [i for i in range(6) if names[i] == name]
        total = sum(weight[i].item() for i in rows)
        by_hand.append([sum(weight[i].item() * (s_shown[i, c] - s_truth[i, c]).item() for i in rows) / total
                        for c in range(3)])
    casts = colour_calibration.colour_casts(s_shown, s_truth, names, weight)
    torch.testing.assert_close(casts, torch.tensor(by_hand), atol=1e-6, rtol=0)
    plain = float(colour_calibration.calibration_loss(shown, truth, 0.01, False, weight))
    with_cast = float(colour_calibration.calibration_loss(shown, truth, 0.01, False, weight, cast_weight=3.0))
    assert with_cast == pytest.approx(plain + 3.0 * max(abs(c) for row in by_hand for c in row), rel=1e-5)


def test_a_cast_weight_shrinks_the_worst_cast_of_the_fit():
    """Without it the fit moves one colour's mean away to name the others better (the shipped stage 6's white went
    mint); with it the worst cast after the fit is smaller."""
    model, _ = load_model(SOURCE)
    pipe = Instant3DPipeline.from_pretrained(SOURCE)
    samples = colour_calibration.surface_samples(pipe, prompt_split()[0][:12], 1, 60)
    _, _, plain = colour_calibration.fit_albedo_head(model.field, samples, 60, 0.01)
    _, _, cast = colour_calibration.fit_albedo_head(model.field, samples, 60, 0.01, cast_weight=5.0)
    assert cast["after"]["worst_cast"] < plain["after"]["worst_cast"]
    assert plain["before"]["worst_cast"] == pytest.approx(cast["before"]["worst_cast"])


def test_points_in_line_with_a_part_are_in_front_of_it_and_behind_it_only():
    snowman = scene_for_prompt("a white snowman with a carrot nose")
    nose = next(part for part in snowman.parts if part.name == "nose")
    x, y, _ = nose.offset
    points = torch.tensor([[x, y, 0.9], [x, y, -0.9], [x, y, 0.0], [x + 0.5, y, -0.9], [x, y - 0.6, -0.9]])
    assert snowman.in_line_with_parts(points).tolist() == [True, True, True, False, False]
    assert not scene_for_prompt("a red cube").in_line_with_parts(points).any()
    samples = colour_calibration.surface_samples(Instant3DPipeline.from_pretrained(SOURCE),
                                                 ["a white snowman with a carrot nose"], 1, 2000)
    assert 0 < int(samples.in_line.sum()) < len(samples.in_line)


def test_a_published_calibrated_checkpoint_says_so_on_its_model_card(tmp_path):
    """The calibration is a step after training: the model card names its command, and says EMA weights only when
    the calibrated training checkpoint held them."""
    import training.publish as publish

    calibrated = tmp_path / "calibrated"
    assert colour_calibration.main(["--checkpoint", SOURCE, "--out", str(calibrated), "--seeds", "1", "--points",
                                    "30", "--steps", "5", "--limit", "2"]) == 0
    config = json.loads((calibrated / "config.json").read_text())
    assert config["colour_calibration"]["ema"] is False  # a published folder keeps no trainer state
    assert publish.main([str(calibrated), str(tmp_path / "out"), "--text-encoder", "assets/priors/toy-clip"]) == 0
    card = (tmp_path / "out" / "README.md").read_text()
    assert "the trained weights" in card and "EMA weights" not in card
    assert f"`python -m toyworld.colour_calibration --checkpoint {SOURCE} --out {calibrated}" in card

    config["colour_calibration"]["ema"] = True  # as when it calibrated runs/<name>/checkpoints/step-N of an EMA run
    (calibrated / "config.json").write_text(json.dumps(config))
    assert publish.main([str(calibrated), str(tmp_path / "out"), "--text-encoder", "assets/priors/toy-clip"]) == 0
    assert "EMA weights" in (tmp_path / "out" / "README.md").read_text()


def test_kept_ema_reads_the_trainer_state_of_a_step_folder(tmp_path):
    from training.trainer import STATE_JSON, kept_ema

    assert not kept_ema(tmp_path)
    for decay, want in [(0.995, True), (0.0, False)]:
        (tmp_path / STATE_JSON).write_text(json.dumps({"config": {"optim": {"ema_decay": decay}}}))
        assert kept_ema(tmp_path) is want
    (tmp_path / STATE_JSON).unlink()
    assert kept_ema(tmp_path, {"colour_calibration": {"ema": True}})  # calibrated from an EMA step folder
    assert not kept_ema(tmp_path, {"colour_calibration": {"ema": False}})
