"""Train a checkpoint in stages with one command: each stage an ordinary training run (a config from
training/configs plus overrides) started from the previous stage's last checkpoint, then, if the recipe asks, one
finishing step on the last stage's checkpoint (for the toy world's bilinear default, toyworld.colour_calibration).

    python -m training.recipe training/recipes/toyworld_default_bilinear.toml [--until STAGE] [--plan]

Why: the toy world's default takes five stages (its bilinear retraining a calibration after them). By hand, each
stage's ``model.init_checkpoint`` must be pointed at the previous stage's last step, and a session that is killed
loses track of which stage was running. Re-running the same command skips finished stages and a finish already
written, resumes the stage in progress (training.train's own resume from its newest readable checkpoint), and adds
each stage's wall time to OUTPUT/recipe.json, which is what a published checkpoint's README quotes. One process
only: for torchrun, run the stages one by one with ``python -m training.train`` (``--plan`` prints their commands).

A recipe is a TOML file::

    output_dir = "runs/toyworld-default"               # stage NAME trains into output_dir/NAME
    overrides = ['model.upsampling=["bilinear", ...]']  # for every stage (optional)

    [[stage]]
    name = "1-albedo"
    config = "training/configs/toyworld_supervised.toml"
    overrides = ["optim.steps=15000"]                   # this stage's own (optional)
    published = "assets/stages/..."                     # optional: its result as shipped; when that folder is
                                                        # there, the stage is not trained and the next starts from
                                                        # it, and the stages before it are not needed

    [finish]                                            # optional: one step after the last stage
    module = "toyworld.colour_calibration"              # its main(argv) takes --checkpoint and --out
    name = "calibrated"                                 # writes output_dir/calibrated (default: "finished")
    args = ["--seeds", "3"]                             # more of its flags (optional)

The finishing module is named, not imported here: training sits below the toy world and must not import it.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import json
import logging
import re
import shlex
import signal
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from instant3d.io.checkpoint import CONFIG_NAME, WEIGHTS_NAME
from instant3d.io.files import atomic_path

from .config import load_config

RECORD_NAME = "recipe.json"
STAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
log = logging.getLogger("instant3d.recipe")


class RecipeError(ValueError):
    """A recipe file that cannot be run as written; the message names the file and the fault."""


@dataclass(frozen=True)
class Stage:
    name: str
    config: Path
    overrides: tuple[str, ...] = ()
    published: Path | None = None  # a shipped copy of this stage's result: when there, the stage is not trained

    def published_result(self) -> Path | None:
        return self.published if self.published and (self.published / CONFIG_NAME).is_file() else None


@dataclass(frozen=True)
class Finish:
    module: str
    name: str = "finished"
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Recipe:
    source: Path
    output_dir: Path
    stages: tuple[Stage, ...]
    overrides: tuple[str, ...] = ()
    finish: Finish | None = None

    def stage_dir(self, stage: Stage) -> Path:
        return self.output_dir / stage.name

    @property
    def finish_dir(self) -> Path:
        return self.output_dir / self.finish.name


def _strings(value, where: str, source: Path) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RecipeError(f"{source}: {where} must be a list of strings, got {value!r}")
    return tuple(value)


def load_recipe(path) -> Recipe:
    """Read and check a recipe; every fault is a RecipeError naming the file, the key and what to write instead."""
    source = Path(path)
    if not source.is_file():
        raise RecipeError(f"recipe {source} does not exist (see training/recipes/ for the project's own)")
    try:
        data = tomllib.loads(source.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{source} is not valid TOML: {exc}") from exc
    unknown = set(data) - {"output_dir", "overrides", "stage", "finish"}
    if unknown:
        raise RecipeError(f"{source}: unknown keys {sorted(unknown)}; a recipe has output_dir, overrides, [[stage]] "
                          "and [finish]")
    if not isinstance(data.get("output_dir"), str) or not data["output_dir"]:
        raise RecipeError(f'{source}: output_dir must be a folder name, e.g. output_dir = "runs/my-recipe"')
    overrides = _strings(data.get("overrides", []), "overrides", source)
    _check_overrides(source, "overrides", overrides, first_stage=False)
    stages, names = [], set()
    for k, entry in enumerate(data.get("stage", [])):
        where = f"stage {k + 1}"
        extra = set(entry) - {"name", "config", "overrides", "published"}
        if extra:
            raise RecipeError(f"{source}: {where} has unknown keys {sorted(extra)} "
                              "(name, config, overrides, published)")
        name = entry.get("name", "")
        if not isinstance(name, str) or not STAGE_NAME.match(name):
            raise RecipeError(f"{source}: {where} needs a name of letters, digits, '-', '_' or '.', got {name!r}")
        if name in names:
            raise RecipeError(f"{source}: stage name {name!r} is used twice; give each stage its own")
        names.add(name)
        config = Path(entry.get("config", ""))
        if not config.is_file():
            raise RecipeError(f"{source}: {where} ({name}) names config {str(config)!r}, which does not exist")
        own = _strings(entry.get("overrides", []), f"{name}'s overrides", source)
        _check_overrides(source, f"stage {name}", own, first_stage=not stages)
        published = entry.get("published")
        if published is not None and (not isinstance(published, str) or not published):
            raise RecipeError(f"{source}: stage {name}'s published must be a checkpoint folder, got {published!r}")
        stages.append(Stage(name, config, own, Path(published) if published else None))
    if not stages:
        raise RecipeError(f"{source}: no [[stage]] tables; a recipe needs at least one stage")
    finish = data.get("finish")
    if finish is not None:
        if set(finish) - {"module", "name", "args"}:
            raise RecipeError(f"{source}: [finish] takes module, name and args, got {sorted(finish)}")
        module, name = finish.get("module"), finish.get("name", "finished")
        if not isinstance(module, str) or not module:
            raise RecipeError(f'{source}: [finish] needs module, e.g. module = "toyworld.colour_calibration"')
        if not isinstance(name, str) or not STAGE_NAME.match(name) or name in names:
            raise RecipeError(f"{source}: [finish] name {name!r} must be a folder name no stage uses")
        args = _strings(finish.get("args", []), "finish.args", source)
        if {"--checkpoint", "--out"} & set(args):
            raise RecipeError(f"{source}: finish.args may not set --checkpoint or --out; the recipe sets them")
        finish = Finish(module, name, args)
    return Recipe(source, Path(data["output_dir"]), tuple(stages), overrides, finish)


FORBIDDEN = {"run.output_dir": "the recipe sets it (output_dir/NAME)",
             "model.init_checkpoint": "the recipe sets it (the previous stage's last checkpoint)"}


def _check_overrides(source: Path, where: str, overrides: tuple[str, ...], first_stage: bool) -> None:
    """The recipe owns where each stage writes and starts; only the first stage may name its own start."""
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key in FORBIDDEN and not (first_stage and key == "model.init_checkpoint"):
            raise RecipeError(f"{source}: {where} sets {key}, which {FORBIDDEN[key]}"
                              + ("; only the first stage may set model.init_checkpoint" if "init" in key else ""))


def stage_overrides(recipe: Recipe, index: int, init: Path | None) -> list[str]:
    """The overrides stage ``index`` trains with: the recipe's, the stage's, then where it starts and writes."""
    stage = recipe.stages[index]
    overrides = [*recipe.overrides, *stage.overrides,
                 f"run.output_dir={json.dumps(recipe.stage_dir(stage).as_posix())}"]
    if init is not None:
        overrides.append(f"model.init_checkpoint={json.dumps(init.as_posix())}")
    return overrides


def last_step(stage_dir: Path, steps: int) -> Path:
    """The folder the trainer writes a stage's checkpoint at its last step to."""
    return stage_dir / "checkpoints" / f"step-{steps:07d}"


def final_checkpoint(stage_dir: Path, steps: int) -> Path | None:
    """The stage's checkpoint at its last step, if it got there (checkpoints are written atomically)."""
    folder = last_step(stage_dir, steps)
    return folder if (folder / CONFIG_NAME).is_file() else None


def weights_digest(folder: Path | None) -> str | None:
    """What a stage started from, to notice a finished stage whose start was retrained since."""
    if folder is None:
        return None
    return hashlib.sha256((folder / WEIGHTS_NAME).read_bytes()).hexdigest()[:16]


@dataclass
class Record:
    """OUTPUT/recipe.json: per stage, its last checkpoint, the digest of the weights it started from, and the wall
    time summed over every run of it."""

    path: Path
    data: dict = field(default_factory=dict)

    @classmethod
    def open(cls, output_dir: Path) -> "Record":
        path = output_dir / RECORD_NAME
        return cls(path, json.loads(path.read_text()) if path.is_file() else {"stages": {}})

    def add(self, name: str, seconds: float, **facts) -> None:
        entry = self.data["stages"].setdefault(name, {"seconds": 0.0})
        entry["seconds"] = round(entry["seconds"] + seconds, 1)
        entry.update(facts)
        self._save()

    def forget(self, name: str) -> None:
        """A stage (or finish) made again from nothing, its folder deleted: its old time no longer counts."""
        if self.data["stages"].pop(name, None) is not None:
            self._save()

    def _save(self) -> None:
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(self.data, indent=2) + "\n")

    def check_start(self, recipe: Recipe, name: str, start: str | None) -> None:
        """Refuse to skip a finished stage (or finish) that started from other weights than the ones there now."""
        recorded = self.data["stages"].get(name, {}).get("started_from")
        if recorded is not None and start is not None and recorded != start:
            raise RecipeError(f"{recipe.source}: {name} in {recipe.output_dir} was made from other weights than "
                              f"the previous stage's checkpoint now there (it was retrained since); delete "
                              f"{recipe.output_dir / name} to make it again from the new one")


@dataclass(frozen=True)
class StagePlan:
    """One stage as it will run: its config, the checkpoint it starts from (None: a fresh model or the config's
    own), its overrides, and the checkpoint the next stage starts from (its published copy, else its last step)."""

    stage: Stage
    cfg: object
    start: Path | None
    overrides: list[str]
    result: Path
    published: Path | None


def stage_plans(recipe: Recipe) -> list[StagePlan]:
    """Every stage's training config, loaded before anything runs, so a typo in stage 5 costs no hours."""
    plans, start = [], None
    for k, stage in enumerate(recipe.stages):
        overrides = stage_overrides(recipe, k, start)
        try:
            cfg = load_config(stage.config, overrides)
        except (ValueError, OSError) as exc:
            raise RecipeError(f"{recipe.source}: stage {stage.name} ({stage.config}): {exc}") from exc
        published = stage.published_result()
        result = published or last_step(recipe.stage_dir(stage), cfg.optim.steps)
        plans.append(StagePlan(stage, cfg, start, overrides, result, published))
        start = result
    if recipe.finish is not None and importlib.util.find_spec(recipe.finish.module) is None:
        raise RecipeError(f"{recipe.source}: [finish] module {recipe.finish.module!r} does not exist")
    return plans


def last_published(plans: list[StagePlan]) -> int:
    """Index of the last stage with a published copy (-1: none). The stages before it need not run: nothing
    starts from them any more."""
    return max((k for k, p in enumerate(plans) if p.published), default=-1)


def plan(recipe: Recipe) -> list[str]:
    """The shell commands the recipe amounts to, one per stage (and the finish), for reading or torchrun."""
    lines = []
    plans = stage_plans(recipe)
    shipped = last_published(plans)
    for k, p in enumerate(plans):
        command = shlex.join(["python", "-m", "training.train", "--config", str(p.stage.config), *p.overrides])
        if p.published:  # shown for the record, commented out: the next stage starts from the copy
            lines += [f"# stage {p.stage.name}: its published copy {p.published} is used; it was made by:",
                      f"# {command}"]
        elif k < shipped:
            lines += [f"# stage {p.stage.name}: not needed, a later stage's published copy is used; it was made by:",
                      f"# {command}"]
        else:
            lines.append(command)
    if recipe.finish is not None:
        lines.append(shlex.join(["python", "-m", recipe.finish.module, "--checkpoint", str(p.result),
                                 "--out", str(recipe.finish_dir), *recipe.finish.args]))
    return lines


def _train_stage(recipe: Recipe, record: Record, stage: Stage, cfg, init: Path | None) -> None:
    from .trainer import Trainer

    log.info("stage %s: training to step %d in %s", stage.name, cfg.optim.steps, recipe.stage_dir(stage))
    if not any((recipe.stage_dir(stage) / "checkpoints").glob("step-*")):  # no resume: a deleted stage starts afresh
        record.forget(stage.name)
    start, started_from = time.monotonic(), weights_digest(init)
    done = None
    try:
        Trainer(cfg).train()
    finally:  # a stage stopped by Ctrl-C, SIGTERM or an error still counts the time it ran (not a SIGKILL's)
        done = final_checkpoint(recipe.stage_dir(stage), cfg.optim.steps)
        record.add(stage.name, time.monotonic() - start, final=str(done) if done else None, steps=cfg.optim.steps,
                   started_from=started_from)
    if done is None:  # cannot happen unless the trainer changes how it names its last checkpoint
        raise RuntimeError(f"stage {stage.name} ended without a checkpoint at step {cfg.optim.steps}")


def _finish(recipe: Recipe, record: Record, last: Path) -> Path:
    out, finish = recipe.finish_dir, recipe.finish
    if (out / CONFIG_NAME).is_file():
        record.check_start(recipe, finish.name, weights_digest(last))
        log.info("%s: finished (%s), skipped", finish.name, out)
        return out
    entry = getattr(importlib.import_module(finish.module), "main", None)
    if not callable(entry):
        raise RecipeError(f"{recipe.source}: [finish] module {finish.module!r} has no main(argv) to run")
    record.forget(finish.name)  # made anew (never resumed): only this run's time counts
    start = time.monotonic()
    code = entry(["--checkpoint", str(last), "--out", str(out), *finish.args])
    if code:
        raise RuntimeError(f"{finish.module} exited with {code}; see its message above")
    if not (out / CONFIG_NAME).is_file():
        raise RuntimeError(f"{finish.module} exited normally but wrote no checkpoint to {out}")
    record.add(finish.name, time.monotonic() - start, final=str(out), source=str(last),
               started_from=weights_digest(last))
    return out


def run(recipe: Recipe, until: str | None = None) -> Path:
    """Run (or resume) every stage up to and including ``until``, then the finish; returns the last checkpoint."""
    names = [s.name for s in recipe.stages]
    if until is not None and until not in names:
        raise RecipeError(f"--until {until!r} is not a stage of {recipe.source}; its stages are {names}")
    record = Record.open(recipe.output_dir)
    plans = stage_plans(recipe)
    if until is not None:
        plans = plans[:names.index(until) + 1]
    shipped = last_published(plans)
    for k, p in enumerate(plans):
        if p.published:
            log.info("stage %s: its published copy %s is used, not trained", p.stage.name, p.published)
        elif k < shipped:
            log.info("stage %s: not needed, stage %s's published copy is used", p.stage.name,
                     plans[shipped].stage.name)
        elif final_checkpoint(recipe.stage_dir(p.stage), p.cfg.optim.steps) is None:
            _train_stage(recipe, record, p.stage, p.cfg, p.start)
        else:
            record.check_start(recipe, p.stage.name, weights_digest(p.start))
            log.info("stage %s: finished (%s), skipped", p.stage.name, p.result)
    if until is not None or recipe.finish is None:
        return p.result
    return _finish(recipe, record, p.result)


def _interrupt(signum, frame):
    """SIGTERM / SIGHUP (a session cut off) end the run as Ctrl-C does, so the time it ran is recorded."""
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="a recipe TOML file (see training/recipes/)")
    parser.add_argument("--until", help="stop after this stage (its name)")
    parser.add_argument("--plan", action="store_true", help="print the stages' commands and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from .trainer import TrainingStopped

    try:
        recipe = load_recipe(args.recipe)
        if args.plan:
            print("\n".join(plan(recipe)))
            return 0
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, _interrupt)
        final = run(recipe, args.until)
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingStopped as exc:
        log.error("%s", exc)
        return 3
    said = f"stopped after stage {args.until}" if args.until else "recipe done"
    print(f"{said}: {final} (wall times in {recipe.output_dir / RECORD_NAME})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
