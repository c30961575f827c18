"""The toy world: captioned scenes with exact ground truth (signed distance + albedo) in the world frame.

docs/DESIGN.md §4. +Y up, the front faces +Z; objects fit in [-1, 1]^3. Scenes are built from primitives
(cube, sphere, cylinder, cone, torus, pyramid) in named colours, single ("a small red cube"), stacked
("a red cube on top of a blue sphere") or one of three objects with a clear front (a snowman with a carrot
nose, a duck with a beak, a house with a door) so that the Janus problem can appear and be measured.

Public API: ``scene_for_prompt(prompt)`` -> ``Scene`` with ``sdf``, ``occupancy`` and ``albedo`` on (N, 3)
points; ``all_prompts()``; ``prompt_split()`` -> (train, held out).
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass
from typing import Callable

import torch

from instant3d.render.color import srgb_to_linear

# Named colours, defined in sRGB (how people picture them) and stored linear (the field's albedo is linear).
COLOURS_SRGB = {
    "red": (0.85, 0.12, 0.10), "orange": (0.95, 0.50, 0.08), "yellow": (0.95, 0.85, 0.15),
    "green": (0.15, 0.70, 0.20), "cyan": (0.10, 0.75, 0.80), "blue": (0.12, 0.25, 0.85),
    "purple": (0.55, 0.20, 0.75), "pink": (0.95, 0.50, 0.70), "white": (0.92, 0.92, 0.92),
    "brown": (0.50, 0.30, 0.15),
}
COLOURS = {name: tuple(srgb_to_linear(torch.tensor(rgb)).tolist()) for name, rgb in COLOURS_SRGB.items()}
SHAPES = ("cube", "sphere", "cylinder", "cone", "torus", "pyramid")
STACK_COLOURS = ("red", "yellow", "green", "blue", "purple", "white")
STACK_BASES = ("cube", "cylinder", "sphere")
SIZES = {"small": 0.6, "": 1.0, "large": 1.3}
FRONT_OBJECTS = ("snowman", "duck", "house")
CARROT, BLACK, DOOR = (0.95, 0.45, 0.05), (0.02, 0.02, 0.02), (0.25, 0.12, 0.05)


# -- primitives: exact signed distances, centred at the origin, unit size (about 0.5 in radius) --------------------
def sd_box(p, half):
    q = p.abs() - torch.as_tensor(half, dtype=p.dtype, device=p.device)
    return q.clamp_min(0).norm(dim=-1) + q.amax(dim=-1).clamp_max(0)


def sd_sphere(p, r):
    return p.norm(dim=-1) - r


def sd_cylinder(p, r, half_h):
    d = torch.stack([p[:, [0, 2]].norm(dim=-1) - r, p[:, 1].abs() - half_h], dim=-1)
    return d.clamp_min(0).norm(dim=-1) + d.amax(dim=-1).clamp_max(0)


def _slanted_side(radial, y, r, h):
    """Signed distance to the slanted side of a cone/pyramid face (base half-width r at y = -h/2, apex at +h/2)."""
    return (radial - r * (h / 2 - y) / h) / (1 + (r / h) ** 2) ** 0.5


def sd_cone(p, r, h):
    """Cone, apex up: intersection of the slanted side and the base plane. Exact sign; distance exact near the
    faces and a lower bound elsewhere (safe for sphere tracing)."""
    y = p[:, 1]
    return torch.maximum(_slanted_side(p[:, [0, 2]].norm(dim=-1), y, r, h), -(y + h / 2))


def sd_torus(p, major, minor):
    """A ring lying flat (in the XZ plane)."""
    q = torch.stack([p[:, [0, 2]].norm(dim=-1) - major, p[:, 1]], dim=-1)
    return q.norm(dim=-1) - minor


def sd_pyramid(p, half, h):
    """Square pyramid, apex up: intersection of four slanted faces and the base plane (like ``sd_cone``)."""
    y = p[:, 1]
    faces = [_slanted_side(p[:, 0].abs(), y, half, h), _slanted_side(p[:, 2].abs(), y, half, h), -(y + h / 2)]
    return torch.stack(faces, dim=-1).amax(dim=-1)


# unit primitives (about 0.5 in radius) and their half-heights, for stacking
PRIMITIVES: dict[str, tuple[Callable, float]] = {
    "cube": (lambda p: sd_box(p, (0.42, 0.42, 0.42)), 0.42),
    "sphere": (lambda p: sd_sphere(p, 0.5), 0.5),
    "cylinder": (lambda p: sd_cylinder(p, 0.4, 0.45), 0.45),
    "cone": (lambda p: sd_cone(p, 0.45, 0.9), 0.45),
    "torus": (lambda p: sd_torus(p, 0.38, 0.14), 0.14),
    "pyramid": (lambda p: sd_pyramid(p, 0.45, 0.8), 0.4),
}


@dataclass
class Part:
    """A primitive placed in the world: world sdf(p) = scale * sdf((p - offset)[axes] / scale)."""

    sdf: Callable[[torch.Tensor], torch.Tensor]
    colour: tuple[float, float, float]  # linear
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: float = 1.0
    axes: tuple[int, int, int] = (0, 1, 2)  # which world axis is the primitive's x, y (its "up"), z
    name: str = ""  # a small named feature ("nose", "beak", "door", "eye"); "" for the body

    def distance(self, p: torch.Tensor) -> torch.Tensor:
        local = (p - torch.tensor(self.offset, dtype=p.dtype, device=p.device))[:, list(self.axes)]
        return self.scale * self.sdf(local / self.scale)


@dataclass
class Scene:
    prompt: str
    parts: list[Part]
    front_facing: bool = False  # has a clear front (+Z): counts for the Janus rate

    def sdf(self, points: torch.Tensor) -> torch.Tensor:
        """Signed distance (negative inside) at (N, 3) points; exact sign, a safe lower bound on the distance."""
        return torch.stack([part.distance(points) for part in self.parts], dim=-1).amin(dim=-1)

    def occupancy(self, points: torch.Tensor) -> torch.Tensor:
        return self.sdf(points) < 0

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        """Linear albedo (N, 3): the colour of the part whose surface is nearest (the one the point is in)."""
        d = torch.stack([part.distance(points) for part in self.parts], dim=-1)
        colours = torch.tensor([part.colour for part in self.parts], dtype=points.dtype, device=points.device)
        return colours[d.argmin(dim=-1)]

    def in_line_with_parts(self, points: torch.Tensor, bound: float = 1.0, margin: float = 0.02,
                           depths: int = 64) -> torch.Tensor:
        """(N,) bool: does a small named part lie within ``margin`` of the line through each point along z? The
        triplane's XY plane gives (x, y, z) and (x, y, -z) the same features, so what the front's parts teach there
        shows at the back too; these are the points where that ghost can appear."""
        if not any(part.name for part in self.parts) or len(points) == 0:
            return torch.zeros(len(points), dtype=torch.bool, device=points.device)
        z = torch.linspace(-bound, bound, depths, dtype=points.dtype, device=points.device)
        column = torch.cat([points[:, None, :2].expand(-1, depths, 2), z[None, :, None].expand(len(points), depths, 1)],
                           dim=-1).reshape(-1, 3)
        distance = torch.stack([p.distance(column) for p in self.parts if p.name], dim=-1).amin(dim=-1)
        return (distance < margin).view(len(points), depths).any(dim=1)


def _single(prompt, size, colour, shape) -> Scene:
    sdf, _ = PRIMITIVES[shape]
    return Scene(prompt, [Part(sdf, COLOURS[colour], scale=SIZES[size])])


def _stack(prompt, top_colour, top, base_colour, base) -> Scene:
    (top_sdf, top_h), (base_sdf, base_h) = PRIMITIVES[top], PRIMITIVES[base]
    s_top, s_base = 0.5, 0.62
    total = 2 * (top_h * s_top + base_h * s_base)
    y_base = -total / 2 + base_h * s_base
    y_top = y_base + base_h * s_base + top_h * s_top
    return Scene(prompt, [Part(base_sdf, COLOURS[base_colour], (0, y_base, 0), s_base),
                          Part(top_sdf, COLOURS[top_colour], (0, y_top, 0), s_top)])


def _eyes(y, z, dx=0.09, r=0.045) -> list[Part]:
    return [Part(lambda p: sd_sphere(p, r), BLACK, (x, y, z), name="eye") for x in (-dx, dx)]


def _snowman(prompt, colour) -> Scene:
    nose = Part(lambda p: sd_cone(p, 0.07, 0.3), CARROT, (0, 0.3, 0.38), axes=(0, 2, 1), name="nose")  # apex: +Z
    parts = [Part(lambda p: sd_sphere(p, 0.4), COLOURS[colour], (0, -0.3, 0)),
             Part(lambda p: sd_sphere(p, 0.27), COLOURS[colour], (0, 0.3, 0)), nose, *_eyes(0.39, 0.2)]
    return Scene(prompt, parts, front_facing=True)


def _duck(prompt, colour) -> Scene:
    beak = Part(lambda p: sd_cone(p, 0.1, 0.28), CARROT, (0, 0.3, 0.5), axes=(0, 2, 1), name="beak")
    parts = [Part(lambda p: sd_sphere(p, 0.42), COLOURS[colour], (0, -0.2, -0.08)),
             Part(lambda p: sd_sphere(p, 0.26), COLOURS[colour], (0, 0.3, 0.2)), beak, *_eyes(0.38, 0.41, 0.1, 0.04)]
    return Scene(prompt, parts, front_facing=True)


def _house(prompt, colour) -> Scene:
    roof_colour = COLOURS["red" if colour == "brown" else "brown"]
    parts = [Part(lambda p: sd_box(p, (0.45, 0.32, 0.45)), COLOURS[colour], (0, -0.25, 0)),
             Part(lambda p: sd_pyramid(p, 0.55, 0.45), roof_colour, (0, 0.295, 0)),
             Part(lambda p: sd_box(p, (0.11, 0.19, 0.03)), DOOR, (0, -0.38, 0.45), name="door")]
    return Scene(prompt, parts, front_facing=True)


_SHAPE = "|".join(SHAPES)
_COLOUR = "|".join(COLOURS)
GRAMMAR = [
    (re.compile(rf"^an? (?:(small|large) )?({_COLOUR}) ({_SHAPE})$"),
     lambda m, p: _single(p, m[1] or "", m[2], m[3])),
    (re.compile(rf"^an? ({_COLOUR}) ({_SHAPE}) on top of an? ({_COLOUR}) ({_SHAPE})$"),
     lambda m, p: _stack(p, m[1], m[2], m[3], m[4])),
    (re.compile(rf"^an? ({_COLOUR}) snowman with a carrot nose$"), lambda m, p: _snowman(p, m[1])),
    (re.compile(rf"^an? ({_COLOUR}) duck with an orange beak$"), lambda m, p: _duck(p, m[1])),
    (re.compile(rf"^an? ({_COLOUR}) house with a door$"), lambda m, p: _house(p, m[1])),
]


def scene_for_prompt(prompt: str) -> Scene:
    """The scene a toy-world prompt describes ("a" or "an" alike: "an orange cube" is "a orange cube", the form
    the world's own prompt list keeps); ValueError for a prompt outside the grammar."""
    text = " ".join(prompt.lower().split())
    for pattern, build in GRAMMAR:
        match = pattern.match(text)
        if match:
            return build(match, text)
    raise ValueError(f"{prompt!r} is not a toy-world prompt (e.g. 'a small red cube', "
                     "'a red cube on top of a blue sphere', 'a white snowman with a carrot nose')")


@functools.lru_cache(maxsize=None)
def detail_points(prompt: str) -> list[tuple[float, float, float]]:
    """The centres of the prompt's small named parts (nose, beak, door, each eye), where close-up training views
    aim; empty for scenes without any. Each centre is the mean of a 96^3 grid's points inside the part."""
    scene = scene_for_prompt(prompt)
    named = [part for part in scene.parts if part.name]
    if not named:
        return []
    axis = torch.linspace(-1, 1, 96)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    centres = []
    for part in named:
        inside = grid[part.distance(grid) < 0]
        centres.append(tuple(inside.mean(dim=0).tolist()))
    return centres


def all_prompts() -> list[str]:
    """Every prompt the grammar makes (750): singles in three sizes, stacks, front-facing objects."""
    singles = [f"a {size + ' ' if size else ''}{c} {s}" for size in SIZES for c in COLOURS for s in SHAPES]
    stacks = [f"a {c1} {s1} on top of a {c2} {s2}" for c1 in STACK_COLOURS for s1 in SHAPES
              for c2 in STACK_COLOURS if c2 != c1 for s2 in STACK_BASES]
    fronts = ([f"a {c} snowman with a carrot nose" for c in COLOURS]
              + [f"a {c} duck with an orange beak" for c in COLOURS]
              + [f"a {c} house with a door" for c in COLOURS])
    return singles + stacks + fronts


def spread_subset(prompts: list[str], count: int) -> list[str]:
    """``count`` prompts spread evenly over the list (all kinds represented); all of them when count <= 0."""
    if count <= 0 or count >= len(prompts):
        return list(prompts)
    step = len(prompts) / count
    return [prompts[int(i * step)] for i in range(count)]


def prompt_split(train_fraction: float = 0.6, seed: int = 0) -> tuple[list[str], list[str]]:
    """A seeded split, stratified by kind (single / stack / front-facing) so that each kind is in both parts;
    held-out prompts are unseen combinations of words that all occur in the training part."""
    kinds: dict[str, list[str]] = {}
    for p in all_prompts():
        kind = "stack" if " on top of " in p else ("front" if scene_for_prompt(p).front_facing else "single")
        kinds.setdefault(kind, []).append(p)
    rng = random.Random(seed)
    train, held_out = [], []
    for kind in sorted(kinds):
        prompts = kinds[kind]
        rng.shuffle(prompts)
        cut = round(train_fraction * len(prompts))
        train += prompts[:cut]
        held_out += prompts[cut:]
    return train, held_out
