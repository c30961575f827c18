"""The miniature ablations: their bookkeeping, and a tiny run of each against the bundled priors."""

import json

import pytest

from toyworld import prompt_split, scene_for_prompt
from toyworld.ablations import ablation_prompts, main, steps_to_reach

TINY = ['model.preset="tiny"', "optim.batch_size=1", "render.resolution=16", "render.samples=8",
        "render.importance=8"]


def test_steps_to_reach_is_the_first_scored_step_at_the_threshold():
    curve = [(300, 0.5), (100, 0.1), (200, 0.31), (400, 0.2)]
    assert steps_to_reach(curve, 0.3) == 200  # order-independent; a later dip does not matter
    assert steps_to_reach(curve, 0.5) == 300
    assert steps_to_reach(curve, 0.6) is None
    assert steps_to_reach([], 0.1) is None


def test_ablation_prompts_come_from_the_training_split():
    train, _ = prompt_split()
    spread = ablation_prompts("sigmoid", 24)
    assert len(spread) == 24 and set(spread) <= set(train)
    assert any(" on top of " in p for p in spread) and any(scene_for_prompt(p).front_facing for p in spread)
    fronts = ablation_prompts("perpneg", 6)
    assert len(fronts) == 6 and set(fronts) <= set(train)
    assert all(scene_for_prompt(p).front_facing for p in fronts)
    assert {p.split()[2] for p in fronts} == {"snowman", "duck", "house"}  # all three objects, spread


@pytest.mark.slow
def test_tiny_sigmoid_ablation_scores_both_variants_at_every_checkpoint(tmp_path, capsys):
    out = tmp_path / "sigmoid"
    assert main(["sigmoid", "--out", str(out), "--steps", "2", "--every", "1", "--prompts", "2", "--iou", "0.0",
                 *TINY]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["curves"]) == {"scaled sigmoid", "plain sigmoid"}
    for name, curve in results["curves"].items():
        assert [step for step, _ in curve] == [1, 2]
        assert all(0.0 <= iou <= 1.0 for _, iou in curve)
        assert results["steps_to_threshold"][name] == 1  # IoU >= 0 holds at the first scored step
    # the two runs differ only in alpha: the plain one was configured with alpha_start 1
    plain = json.loads((out / "plain-sigmoid" / "checkpoints" / "step-0000002" / "trainer_state.json").read_text())
    scaled = json.loads((out / "scaled-sigmoid" / "checkpoints" / "step-0000002" / "trainer_state.json").read_text())
    assert plain["config"]["optim"]["alpha_start"] == 1.0 and scaled["config"]["optim"]["alpha_start"] == 0.5
    assert "| step | scaled sigmoid | plain sigmoid |" in capsys.readouterr().out
    # re-running resumes the finished runs instead of training again
    assert main(["sigmoid", "--out", str(out), "--steps", "2", "--every", "1", "--prompts", "2", *TINY]) == 0
    assert len(list((out / "plain-sigmoid" / "checkpoints").glob("step-*"))) == 2


@pytest.mark.slow
def test_tiny_perpneg_ablation_reports_a_janus_rate_per_variant(tmp_path):
    out = tmp_path / "perpneg"
    assert main(["perpneg", "--out", str(out), "--steps", "1", "--prompts", "2", *TINY]) == 0
    results = json.loads((out / "results.json").read_text())
    for name in ("none", "fixed", "adaptive"):
        assert results[name]["janus_objects"] == 2 and results[name]["janus_rate"] in (0.0, 0.5, 1.0)
        state = json.loads((out / name / "checkpoints" / "step-0000001" / "trainer_state.json").read_text())
        assert state["config"]["prior"]["perp_neg"] == name
