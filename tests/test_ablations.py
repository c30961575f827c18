"""The miniature ablations: their bookkeeping, and a tiny run of each against the bundled priors."""

import json

import pytest
import torch

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


def _independent_scores(checkpoint, prompts, clip=None):
    """IoU, colour and Janus verdicts recomputed here from the metrics module, not through the ablation code."""
    from instant3d import Instant3DPipeline
    from toyworld.metrics import geometry_iou, is_janus

    pipe = Instant3DPipeline.from_pretrained(checkpoint)
    ious, janus = [], []
    for prompt in prompts:
        out, scene = pipe(prompt, seed=0), scene_for_prompt(prompt)
        ious.append(geometry_iou(out, scene))
        if clip is not None and scene.front_facing:
            janus.append(float(is_janus(out, scene, clip)))
    return sum(ious) / len(ious), (sum(janus) / len(janus) if janus else None)


def _weights(checkpoint):
    from safetensors.torch import load_file

    return load_file(checkpoint / "model.safetensors")


@pytest.mark.slow
def test_tiny_sigmoid_ablation_scores_both_variants_at_every_checkpoint(tmp_path, capsys):
    out = tmp_path / "sigmoid"
    assert main(["sigmoid", "--out", str(out), "--steps", "2", "--every", "1", "--prompts", "2", "--iou", "2.0",
                 *TINY]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["curves"]) == {"scaled sigmoid", "plain sigmoid"}
    for name, curve in results["curves"].items():
        assert [step for step, _ in curve] == [1, 2]
        folder = out / name.replace(" ", "-") / "checkpoints"
        for step, iou in curve:  # each point is the IoU of that step's weights, recomputed independently
            assert iou == pytest.approx(_independent_scores(folder / f"step-{step:07d}", results["prompts"])[0],
                                        abs=1e-6)
        assert results["steps_to_threshold"][name] is None  # an IoU of 2 is never reached
    # the two runs differ only in alpha: the plain one was configured with alpha_start 1, and it changed the weights
    plain_ckpt = out / "plain-sigmoid" / "checkpoints" / "step-0000002"
    scaled_ckpt = out / "scaled-sigmoid" / "checkpoints" / "step-0000002"
    plain = json.loads((plain_ckpt / "trainer_state.json").read_text())
    scaled = json.loads((scaled_ckpt / "trainer_state.json").read_text())
    assert plain["config"]["optim"]["alpha_start"] == 1.0 and scaled["config"]["optim"]["alpha_start"] == 0.5
    a, b = _weights(plain_ckpt), _weights(scaled_ckpt)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) > 0
    table = capsys.readouterr().out
    assert "| step | scaled sigmoid | plain sigmoid |" in table and "IoU 2.0 at step > 2" in table
    # re-running resumes the finished runs instead of training again
    assert main(["sigmoid", "--out", str(out), "--steps", "2", "--every", "1", "--prompts", "2", *TINY]) == 0
    assert len(list((out / "plain-sigmoid" / "checkpoints").glob("step-*"))) == 2


@pytest.mark.slow
def test_tiny_perpneg_ablation_reports_a_janus_rate_per_variant(tmp_path):
    from training.clip_model import CLIPScorer

    out = tmp_path / "perpneg"
    assert main(["perpneg", "--out", str(out), "--steps", "1", "--prompts", "2", *TINY]) == 0
    results = json.loads((out / "results.json").read_text())
    clip = CLIPScorer.from_folder("assets/priors/eval-clip")
    weights = {}
    for name in ("none", "fixed", "adaptive"):
        final = out / name / "checkpoints" / "step-0000001"
        state = json.loads((final / "trainer_state.json").read_text())
        assert state["config"]["prior"]["perp_neg"] == name
        iou, janus = _independent_scores(final, results["prompts"], clip)
        assert results[name]["janus_objects"] == 2
        assert results[name]["janus_rate"] == pytest.approx(janus) and results[name]["iou"] == pytest.approx(iou)
        weights[name] = _weights(final)
    # the variant setting reached the gradient: one step with and without Perp-Neg gives different weights
    for other in ("fixed", "adaptive"):
        assert max(float((weights[other][k] - weights["none"][k]).abs().max()) for k in weights["none"]) > 0


def _independent_r_precision(checkpoint, prompts, clip):
    """Lit views at the report's azimuths, each counted a hit when its CLIP nearest caption among all toy-world
    prompts is its own: written out here, not through training.evaluate."""
    from instant3d import Instant3DPipeline
    from toyworld.scenes import all_prompts

    pipe, queries = Instant3DPipeline.from_pretrained(checkpoint), all_prompts()
    text = clip.text_features(queries)
    hits = []
    for prompt in prompts:
        views = pipe(prompt, seed=0).render_many([45.0, 135.0, 225.0, 315.0], [30.0] * 4, 64, shading="lit")
        images = torch.stack([torch.from_numpy(v) for v in views]).permute(0, 3, 1, 2).float() / 255
        nearest = (clip.image_features(images) @ text.T).argmax(dim=-1)
        hits += [queries[int(i)] == prompt for i in nearest]
    return sum(hits) / len(hits)


@pytest.mark.slow
def test_tiny_estimator_pilots_score_each_estimator_on_held_out_prompts(tmp_path, capsys):
    from instant3d import Instant3DPipeline
    from training.clip_model import CLIPScorer
    from toyworld.metrics import colour_scores

    out = tmp_path / "estimators"
    assert main(["estimator", "--out", str(out), "--steps", "1", "--prompts", "2", "--held-out", "2", *TINY]) == 0
    results = json.loads((out / "results.json").read_text())
    _, held_out = prompt_split()
    assert len(results["held_out"]) == 2 and set(results["held_out"]) <= set(held_out)
    clip = CLIPScorer.from_folder("assets/priors/eval-clip")
    weights = {}
    for name in ("sds", "csd", "nfsd", "asd"):
        final = out / name / "checkpoints" / "step-0000001"
        assert json.loads((final / "trainer_state.json").read_text())["config"]["prior"]["estimator"] == name
        scores = results["scores"][name]
        assert scores["iou"] == pytest.approx(_independent_scores(final, results["held_out"])[0])
        pipe = Instant3DPipeline.from_pretrained(final)
        colour = [colour_scores(pipe(p, seed=0), scene_for_prompt(p))[0] for p in results["held_out"]]
        assert scores["colour_accuracy"] == pytest.approx(sum(colour) / len(colour))
        assert scores["r_precision"] == pytest.approx(_independent_r_precision(final, results["held_out"], clip))
        weights[name] = _weights(final)
    # the estimator reached the gradient: one step of each gives other weights than one step of plain SDS
    for other in ("csd", "nfsd", "asd"):
        assert max(float((weights[other][k] - weights["sds"][k]).abs().max()) for k in weights["sds"]) > 0
    table = capsys.readouterr().out
    assert "| estimator | IoU | colour accuracy | R-precision |" in table and "| asd |" in table
    # the same --out with other settings is refused, not resumed and re-scored under the new settings' name
    with pytest.raises(SystemExit, match="holds a run made with other settings"):
        main(["estimator", "--out", str(out), "--steps", "1", "--prompts", "2", "--held-out", "2", *TINY,
              "prior.guidance_scale=3"])
    # pilots that fine-tune a checkpoint get that checkpoint's own row, scored the same way
    start = out / "sds" / "checkpoints" / "step-0000001"
    assert main(["estimator", "--out", str(tmp_path / "fine-tunes"), "--steps", "1", "--prompts", "2", "--held-out",
                 "2", *TINY, f'model.init_checkpoint="{start}"']) == 0
    row = json.loads((tmp_path / "fine-tunes" / "results.json").read_text())["scores"]["(start)"]
    assert row["iou"] == pytest.approx(_independent_scores(start, results["held_out"])[0])
    assert row["r_precision"] == pytest.approx(_independent_r_precision(start, results["held_out"], clip))
    assert "| (start) |" in capsys.readouterr().out
