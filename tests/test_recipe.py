"""training.recipe: stages chained checkpoint to checkpoint, finished stages skipped on a re-run, wall times
recorded, the finishing step (the colour calibration) run last, and recipes that cannot run refused by name."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from training.recipe import RecipeError, load_recipe, main, plan, run, weights_digest

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "training" / "configs" / "smoke.toml"
# the smoke config's tiny random models, trained against the toy world's exact renders (fast, and calibratable)
COMMON = ['objective.mode="supervised"', 'prompts.set="toyworld"', "prompts.validation=[]",
          "run.checkpoint_every=1", "optim.lr=3e-3", "optim.ema_decay=0"]  # raw weights: they move at once


def _toml_list(items) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def _write(tmp_path: Path, stages: list[tuple[str, list[str]]], calibration: list[str] | None = None) -> Path:
    """A recipe of smoke stages; ``calibration``: a [finish] table running the colour calibration with these flags."""
    lines = [f'output_dir = "{tmp_path / "out"}"', f"overrides = {_toml_list(COMMON)}"]
    for name, overrides in stages:
        lines += ["[[stage]]", f'name = "{name}"', f'config = "{SMOKE}"', f"overrides = {_toml_list(overrides)}"]
    if calibration is not None:
        lines += ["[finish]", 'module = "toyworld.colour_calibration"', 'name = "calibrated"',
                  f"args = {_toml_list(calibration)}"]
    path = tmp_path / "recipe.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_each_stage_starts_from_the_last_and_a_rerun_trains_nothing(tmp_path):
    """Stage b runs at learning rate 0, so its weights are exactly where it started: stage a's last checkpoint,
    which each step at 3e-3 moved (so a stage b that started from a fresh model would fail)."""
    recipe = load_recipe(_write(tmp_path, [("a", ["optim.steps=3"]), ("b", ["optim.steps=2", "optim.lr=0.0"])]))
    final = run(recipe)
    out = tmp_path / "out"
    assert final == out / "b" / "checkpoints" / "step-0000002"
    first = load_file(out / "a" / "checkpoints" / "step-0000003" / "model.safetensors")
    second = load_file(final / "model.safetensors")
    assert sorted(first) == sorted(second)
    for name in first:
        torch.testing.assert_close(second[name], first[name], atol=1e-6, rtol=0, msg=lambda m: f"{name}: {m}")
    earlier = load_file(out / "a" / "checkpoints" / "step-0000001" / "model.safetensors")
    assert max(float((first[k] - earlier[k]).abs().max()) for k in first) > 1e-4
    record = json.loads((out / "recipe.json").read_text())
    assert list(record["stages"]) == ["a", "b"]
    assert all(entry["seconds"] > 0 for entry in record["stages"].values())
    assert record["stages"]["b"]["final"] == str(final)

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")}
    assert run(recipe) == final
    assert {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")} == stamps
    assert json.loads((out / "recipe.json").read_text()) == record  # no time added for skipped stages


def test_a_stage_moved_away_from_its_start_when_it_trains(tmp_path):
    """The counterpart of the test above: at a non-zero learning rate stage b's weights leave stage a's."""
    recipe = load_recipe(_write(tmp_path, [("a", ["optim.steps=2"]), ("b", ["optim.steps=2"])]))
    final = run(recipe)
    first = load_file(tmp_path / "out" / "a" / "checkpoints" / "step-0000002" / "model.safetensors")
    second = load_file(final / "model.safetensors")
    assert max(float((second[k] - first[k]).abs().max()) for k in first) > 1e-4


def test_until_stops_after_the_named_stage_and_the_calibration_runs_last(tmp_path):
    path = _write(tmp_path, [("a", ["optim.steps=2"]), ("b", ["optim.steps=1"])],
                  calibration=["--limit", "2", "--seeds", "1", "--points", "20", "--steps", "3"])
    assert main([str(path), "--until", "a"]) == 0
    out = tmp_path / "out"
    assert (out / "a" / "checkpoints" / "step-0000002").is_dir()
    assert not (out / "b").exists() and not (out / "calibrated").exists()
    assert main([str(path)]) == 0
    calibrated = json.loads((out / "calibrated" / "config.json").read_text())["colour_calibration"]
    assert calibrated["from"] == "step-0000001" and calibrated["prompts"] == 2
    record = json.loads((out / "recipe.json").read_text())
    assert record["stages"]["calibrated"]["source"].endswith("b/checkpoints/step-0000001")
    stamp = (out / "calibrated" / "model.safetensors").stat().st_mtime_ns
    assert main([str(path)]) == 0  # everything done: nothing is trained or calibrated again
    assert (out / "calibrated" / "model.safetensors").stat().st_mtime_ns == stamp
    assert json.loads((out / "recipe.json").read_text()) == record
    assert main([str(path), "--until", "nope"]) == 2


def test_a_half_finished_stage_resumes_and_adds_its_time(tmp_path, monkeypatch):
    """The run is cut off in stage b after its step-2 checkpoint (as a session ends): a re-run keeps stage a,
    resumes b at step 2, and b's recorded time grows. A relative output_dir is taken from the working folder."""
    import training.trainer as trainer

    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, [("a", ["optim.steps=2"]), ("b", ["optim.steps=4"])])
    path.write_text(path.read_text().replace(f'output_dir = "{tmp_path / "out"}"', 'output_dir = "out"'))
    recipe = load_recipe(path)
    save = trainer.Trainer.save

    def save_then_stop(self):
        folder = save(self)
        if self.step == 2 and self.out.name == "b":
            raise KeyboardInterrupt("cut off")
        return folder

    monkeypatch.setattr(trainer.Trainer, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run(recipe)
    out = tmp_path / "out"
    first = json.loads((out / "recipe.json").read_text())["stages"]
    assert first["b"]["final"] is None and first["b"]["seconds"] > 0
    a_stamp = (out / "a" / "checkpoints" / "step-0000002" / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(trainer.Trainer, "save", save)
    assert run(recipe) == Path("out") / "b" / "checkpoints" / "step-0000004"
    assert (out / "a" / "checkpoints" / "step-0000002" / "model.safetensors").stat().st_mtime_ns == a_stamp
    state = json.loads((out / "b" / "checkpoints" / "step-0000003" / "trainer_state.json").read_text())
    assert state["step"] == 3
    second = json.loads((out / "recipe.json").read_text())["stages"]
    assert second["a"] == first["a"] and second["b"]["seconds"] > first["b"]["seconds"]
    assert second["b"]["final"] == str(Path("out") / "b" / "checkpoints" / "step-0000004")


def test_a_stage_with_a_published_copy_is_not_trained_and_the_next_starts_from_the_copy(tmp_path):
    """Stage a's result ships as a published folder (here: a copy of a trained one); with it there, a recipe
    naming it trains nothing for a, and b (learning rate 0) ends exactly at the copy's weights."""
    import shutil

    (tmp_path / "first").mkdir()
    source = run(load_recipe(_write(tmp_path / "first", [("a", ["optim.steps=2"])])))
    published = tmp_path / "shipped" / "stage-a"
    shutil.copytree(source, published)
    path = _write(tmp_path, [("a", ["optim.steps=2"]), ("b", ["optim.steps=1", "optim.lr=0.0"])])
    path.write_text(path.read_text().replace('name = "a"\n', f'name = "a"\npublished = "{published}"\n'))
    recipe = load_recipe(path)
    lines = plan(recipe)
    assert lines[0].startswith("# stage a: its published copy") and lines[1].startswith("# python -m training.train")
    assert f"model.init_checkpoint={published}" in lines[2].replace('"', "").replace("'", "")
    final = run(recipe)
    assert not (tmp_path / "out" / "a").exists()
    shipped, got = load_file(published / "model.safetensors"), load_file(final / "model.safetensors")
    for name in shipped:
        torch.testing.assert_close(got[name], shipped[name], atol=1e-6, rtol=0, msg=lambda m: f"{name}: {m}")


def test_the_stages_before_a_published_one_are_not_trained(tmp_path):
    """With stage b shipped, nothing starts from stage a any more: a whole run trains c only (from b's copy), and
    the plan shows a's command commented out. Stopping at a (--until) still trains it: b's copy is not wanted."""
    import shutil

    (tmp_path / "first").mkdir()
    source = run(load_recipe(_write(tmp_path / "first", [("b", ["optim.steps=2"])])))
    published = tmp_path / "shipped" / "stage-b"
    shutil.copytree(source, published)
    path = _write(tmp_path, [("a", ["optim.steps=2"]), ("b", ["optim.steps=2"]), ("c", ["optim.steps=1", "optim.lr=0.0"])])
    path.write_text(path.read_text().replace('name = "b"\n', f'name = "b"\npublished = "{published}"\n'))
    recipe = load_recipe(path)
    lines = plan(recipe)
    assert lines[0].startswith("# stage a: not needed") and lines[1].startswith("# python -m training.train")
    assert lines[2].startswith("# stage b: its published copy") and not lines[4].startswith("#")
    final = run(recipe)
    out = tmp_path / "out"
    assert not (out / "a").exists() and not (out / "b").exists()
    shipped, got = load_file(published / "model.safetensors"), load_file(final / "model.safetensors")
    for name in shipped:
        torch.testing.assert_close(got[name], shipped[name], atol=1e-6, rtol=0, msg=lambda m: f"{name}: {m}")
    assert run(recipe, until="a") == out / "a" / "checkpoints" / "step-0000002"
    assert (out / "a" / "checkpoints" / "step-0000002" / "model.safetensors").is_file()


def _retrain(checkpoint: Path) -> None:
    """Stand-in for a stage trained again: its checkpoint's weights change (one tensor + 1)."""
    weights = checkpoint / "model.safetensors"
    tensors = load_file(weights)
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, weights)


def test_a_finished_stage_whose_start_was_retrained_is_not_skipped_silently(tmp_path):
    recipe = load_recipe(_write(tmp_path, [("a", ["optim.steps=1"]), ("b", ["optim.steps=1"])]))
    run(recipe)
    _retrain(tmp_path / "out" / "a" / "checkpoints" / "step-0000001")
    with pytest.raises(RecipeError, match="delete .*out/b"):
        run(recipe)


def test_deleting_what_the_refusal_names_makes_it_again_with_only_its_new_time(tmp_path):
    """The refusal's advice works: a retrained start, then the finish (or a stage) deleted, is made again from the
    new weights, and its record holds this run's time and start, not the old ones added in."""
    path = _write(tmp_path, [("a", ["optim.steps=1"]), ("b", ["optim.steps=1"])],
                  calibration=["--limit", "2", "--seeds", "1", "--points", "20", "--steps", "3"])
    recipe = load_recipe(path)
    out = tmp_path / "out"
    run(recipe)
    step_b = out / "b" / "checkpoints" / "step-0000001"
    _retrain(step_b)
    with pytest.raises(RecipeError, match="delete .*out/calibrated"):
        run(recipe)
    shutil.rmtree(out / "calibrated")
    record = json.loads((out / "recipe.json").read_text())["stages"]
    record["calibrated"]["seconds"] = 1e6  # an old run's time, which must not be added to the new one's
    record["b"]["seconds"] = 1e6
    (out / "recipe.json").write_text(json.dumps({"stages": record}))
    run(recipe)
    again = json.loads((out / "recipe.json").read_text())["stages"]
    assert again["calibrated"]["seconds"] < 1e6
    assert again["calibrated"]["started_from"] == weights_digest(step_b) != record["calibrated"]["started_from"]
    shutil.rmtree(out / "b")
    run(recipe, until="b")
    assert json.loads((out / "recipe.json").read_text())["stages"]["b"]["seconds"] < 1e6


def test_plan_prints_one_command_per_stage_chained_by_checkpoint(tmp_path):
    recipe = load_recipe(_write(tmp_path, [("a", ["optim.steps=7"]), ("b", [])], calibration=[]))
    lines = plan(recipe)
    assert len(lines) == 3
    assert "model.init_checkpoint" not in lines[0] and "optim.steps=7" in lines[0]
    assert "a/checkpoints/step-0000007" in lines[1]
    assert lines[2].startswith("python -m toyworld.colour_calibration --checkpoint ")
    assert lines[2].split("--checkpoint ")[1].split()[0].endswith("b/checkpoints/step-0000020")  # smoke's 20


@pytest.mark.parametrize("text, says", [
    ('output_dir = "x"\n', "no [[stage]]"),
    ('[[stage]]\nname = "a"\nconfig = "training/configs/smoke.toml"\n', "output_dir"),
    ('output_dir = "x"\n[[stage]]\nname = "a"\nconfig = "nowhere.toml"\n', "nowhere.toml"),
    ('output_dir = "x"\n[[stage]]\nname = "a"\nconfig = "training/configs/smoke.toml"\n'
     '[[stage]]\nname = "a"\nconfig = "training/configs/smoke.toml"\n', "used twice"),
    ('output_dir = "x"\n[[stage]]\nname = "a/b"\nconfig = "training/configs/smoke.toml"\n', "needs a name"),
    ('output_dir = "x"\n[[stage]]\nname = "a"\nconfig = "training/configs/smoke.toml"\nsteps = 3\n',
     "unknown keys ['steps']"),
    ('output_dir = "x"\n[[stage]]\nname = "a"\nconfig = "training/configs/smoke.toml"\n'
     '[finish]\nmodule = "m"\nargs = ["--out", "y"]\n', "--checkpoint or --out"),
    ('output_dir = "x"\n[[stage]]\nname = "a"\nconfig = "training/configs/smoke.toml"\n'
     '[finish]\nargs = []\n', "needs module"),
    ('output_dir = "x"\n[[stage]]\nname = "a"\nconfig = "training/configs/smoke.toml"\n'
     '[finish]\nmodule = "m"\nname = "a"\n', "no stage uses"),
    ('output_dir = "x"\noverrides = "optim.steps=3"\n', "list of strings"),
    ('output_dir = \n', "not valid TOML"),
    ('output_dir = "x"\noverrides = [\'run.output_dir="y"\']\n[[stage]]\nname = "a"\n'
     'config = "training/configs/smoke.toml"\n', "sets run.output_dir"),
    ('output_dir = "x"\n[[stage]]\nname = "a"\nconfig = "training/configs/smoke.toml"\n[[stage]]\nname = "b"\n'
     'config = "training/configs/smoke.toml"\noverrides = [\'model.init_checkpoint="y"\']\n',
     "only the first stage"),
])
def test_recipes_that_cannot_run_are_refused_by_name(tmp_path, monkeypatch, text, says):
    monkeypatch.chdir(ROOT)
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(RecipeError, match="bad.toml") as caught:
        load_recipe(path)
    assert says in str(caught.value)


def test_the_projects_recipes_load(monkeypatch):
    monkeypatch.chdir(ROOT)
    for path in sorted((ROOT / "training" / "recipes").glob("*.toml")):
        recipe = load_recipe(path)
        commands = [line for line in plan(recipe) if not line.startswith("#")]
        shipped = max((k for k, s in enumerate(recipe.stages) if s.published_result()), default=-1)
        assert len(commands) == len(recipe.stages) - (shipped + 1) + (recipe.finish is not None)


def test_a_typo_in_a_later_stage_fails_before_the_first_one_trains(tmp_path):
    recipe = load_recipe(_write(tmp_path, [("a", ["optim.steps=1"]), ("b", ["optim.stepz=1"])]))
    with pytest.raises(RecipeError, match="stage b"):
        run(recipe)
    assert not (tmp_path / "out" / "a").exists()
