"""Prompt sets and their train / held-out splits (the paper, §4.1).

- ``animals``: "a {species} sitting {item} and wearing {gadget} and wearing a {hat}", 10 x 7 x 5 x 9 = 3 150
  prompts (a null slot drops its clause); seeded random 60/40 split, as the paper.
- ``portraits``: "{figure} wearing a {hat} is {expression}", 10 x 4 x 10 = 400 prompts; 60/40.
- ``file``: one prompt per line (Daily Life, or any user set); blank lines and lines starting with # skipped.
- more sets plug in with ``register_prompt_set``. A set that is not registered yet is looked for as a package of
  the same name, whose import registers it (``toyworld`` does so): the generic code never imports a set's
  package by name, so there is no import cycle.
- a set with exact scenes also registers their renderer (``ground_truth``), which the supervised objective needs,
  and may name where each prompt's small details are (``detail_points``), which close-up views aim at.
"""

from __future__ import annotations

import importlib
import importlib.util
import random
from pathlib import Path
from typing import Callable

SPECIES = ["wolf", "dog", "panda", "fox", "civet", "cat", "red panda", "teddy bear", "rabbit", "koala"]
ITEMS = ["in a bathtub", "on a stone", "on books", "on a table", "on the lawn", "in a basket", None]
GADGETS = ["a tie", "a cape", "sunglasses", "a scarf", None]
HATS = ["beret", "beanie", "cowboy hat", "straw hat", "baseball cap", "tophat", "party hat", "sombrero", None]

FIGURES = ["a white man", "a white woman", "a boy", "a girl", "an elderly man", "an elderly woman", "a black woman",
           "a black man", "Obama", "Kobe"]
PORTRAIT_HATS = ["Santa hat", "peaked cap", "steampunk hat", "crown"]
EXPRESSIONS = ["laughing", "crying", "grinning", "singing", "shouting", "looking ahead with a very serious expression",
               "opening mouth wide in shock", "angry", "talking", "feeling sad"]


def animals() -> list[str]:
    prompts = []
    for species in SPECIES:
        for item in ITEMS:
            for gadget in GADGETS:
                for hat in HATS:
                    text = f"a {species}" + (f" sitting {item}" if item else "")
                    clauses = ([f"wearing {gadget}"] if gadget else []) + ([f"wearing a {hat}"] if hat else [])
                    if clauses:
                        text += (" and " if item else " ") + " and ".join(clauses)
                    prompts.append(text)
    return prompts


def portraits() -> list[str]:
    return [f"{f} wearing a {h} is {e}" for f in FIGURES for h in PORTRAIT_HATS for e in EXPRESSIONS]


def from_file(path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = list(dict.fromkeys(p for p in prompts if p and not p.startswith("#")))
    if not prompts:
        raise ValueError(f"prompt file {path} holds no prompts (one per line)")
    return prompts


def split(prompts: list[str], train_fraction: float = 0.6, seed: int = 0) -> tuple[list[str], list[str]]:
    """A seeded random split: (train, held out)."""
    order = list(prompts)
    random.Random(seed).shuffle(order)
    cut = round(train_fraction * len(order))
    return order[:cut], order[cut:]


_REGISTRY: dict[str, Callable[..., tuple[list[str], list[str]]]] = {}
_GROUND_TRUTH: dict[str, Callable] = {}
_DETAIL_POINTS: dict[str, Callable[[str], list[tuple[float, float, float]]]] = {}
_SURFACE_NORMALS: dict[str, Callable] = {}


def register_prompt_set(name: str, make: Callable[..., tuple[list[str], list[str]]],
                        ground_truth: Callable | None = None,
                        detail_points: Callable[[str], list[tuple[float, float, float]]] | None = None,
                        surface_normals: Callable | None = None) -> None:
    """Add a set: ``make(**options)`` returns (train prompts, held-out prompts). ``ground_truth(prompt, cameras,
    resolution, background, shading, light_dirs, ambient)`` -> (linear RGB, mask, depth, detail), when the set has
    exact scenes, renders them for the supervised objective (``detail``: each pixel's coverage by small named
    parts, zeros where a scene has none). ``detail_points(prompt)`` -> the world-space centres of the
    prompt's small named parts (a snowman's nose; empty for a plain cube), for close-up training views.
    ``surface_normals(prompt, count, generator)`` -> (points (count, 3), unit normals (count, 3)) on the exact
    surface, for the supervised objective's normal term."""
    _REGISTRY[name] = make
    if ground_truth is not None:
        _GROUND_TRUTH[name] = ground_truth
    if detail_points is not None:
        _DETAIL_POINTS[name] = detail_points
    if surface_normals is not None:
        _SURFACE_NORMALS[name] = surface_normals


def _find(name: str) -> None:
    """Import the package named like an unregistered set, if there is one: it registers itself."""
    if name not in _REGISTRY and name.isidentifier() and importlib.util.find_spec(name) is not None:
        importlib.import_module(name)


def _registered(table: dict, name: str, missing: str) -> Callable:
    """``table[name]``, once the set is found; else a ValueError from ``missing``, formatted with the set's name and
    the sets the table does have (so the message says what is wrong and what to use instead)."""
    _find(name)
    if name not in table:
        raise ValueError(missing.format(name=repr(name), sets=sorted(table)))
    return table[name]


def ground_truth_renderer(name: str) -> Callable:
    """The exact-scene renderer of set ``name``, or a ValueError naming the sets that have one."""
    return _registered(_GROUND_TRUTH, name, "prompt set {name} has no exact scenes, so it cannot train the "
                       "supervised objective; sets with exact scenes: {sets} (or set mode = \"sds\")")


def surface_normals_sampler(name: str) -> Callable:
    """Set ``name``'s sampler of exact surface points and normals, or a ValueError naming the sets that have one."""
    return _registered(_SURFACE_NORMALS, name, "prompt set {name} has no exact surface normals, so "
                       "objective.normal_weight cannot be used with it; sets that have them: {sets}")


def detail_points_finder(name: str) -> Callable[[str], list[tuple[float, float, float]]]:
    """Where set ``name`` says each prompt's small details are, or a ValueError naming the sets that say so."""
    return _registered(_DETAIL_POINTS, name, "prompt set {name} does not say where its prompts' small parts are, "
                       "so close-up views (render.close_up > 0, prompts.detail_weight != 1) cannot aim at them; "
                       "sets that do: {sets}")


register_prompt_set("animals", lambda train_fraction=0.6, seed=0, **_: split(animals(), train_fraction, seed))
register_prompt_set("portraits", lambda train_fraction=0.6, seed=0, **_: split(portraits(), train_fraction, seed))
register_prompt_set("file", lambda file="", train_fraction=1.0, seed=0, **_: split(from_file(file), train_fraction,
                                                                                     seed))


def load_prompt_set(name: str, **options) -> tuple[list[str], list[str]]:
    _find(name)
    if name not in _REGISTRY:
        raise ValueError(f"unknown prompt set {name!r}; known: {sorted(_REGISTRY)}")
    train, held_out = _REGISTRY[name](**options)
    if not train:
        raise ValueError(f"prompt set {name!r} has no training prompts")
    return train, held_out
