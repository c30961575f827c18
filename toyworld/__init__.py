"""The toy world: scenes with exact ground truth, its prompt set, renders, and the priors trained on them.

Importing it registers the ``toyworld`` prompt set and its exact-scene renderer with ``training.prompt_sets``.
"""

from training.prompt_sets import register_prompt_set

from .render import render_prompt
from .scenes import Scene, all_prompts, detail_points, prompt_split, scene_for_prompt
from .surface import surface_normals

register_prompt_set("toyworld", lambda train_fraction=0.6, seed=0, **_: prompt_split(train_fraction, seed),
                    ground_truth=render_prompt, detail_points=detail_points, surface_normals=surface_normals)

__all__ = ["Scene", "all_prompts", "detail_points", "prompt_split", "render_prompt", "scene_for_prompt",
           "surface_normals"]
