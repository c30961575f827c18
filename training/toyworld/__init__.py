"""The toy world: scenes with exact ground truth, its prompt set, renders, and the priors trained on them."""

from training.prompt_sets import register_prompt_set

from .scenes import Scene, all_prompts, prompt_split, scene_for_prompt

register_prompt_set("toyworld", lambda train_fraction=0.6, seed=0, **_: prompt_split(train_fraction, seed))

__all__ = ["Scene", "all_prompts", "prompt_split", "scene_for_prompt"]
