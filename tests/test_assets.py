"""The bundled toy-world assets load through the real code paths and do their job."""

from pathlib import Path

import torch

from instant3d.cameras import orbit_cameras
from instant3d.color import linear_to_srgb
from instant3d.config import preset_config
from instant3d.text_encoder import TextEncoder
from training.clip_model import CLIPScorer
from training.toyworld import all_prompts, scene_for_prompt
from training.toyworld.render import render_scene
from training.toyworld.scenes import spread_subset

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def test_toy_clip_is_the_small_presets_text_encoder():
    encoder = TextEncoder.from_folder(ASSETS / "priors" / "toy-clip")
    small = preset_config("small")
    assert (encoder.max_length, encoder.token_dim) == (small.text.num_tokens, small.text.token_dim)
    tokens, pooled = encoder.encode(["a red cube on top of a blue sphere", "a blue cube on top of a red sphere"])
    assert not torch.allclose(tokens[0], tokens[1])


def test_toy_clip_retrieves_ground_truth_renders():
    clip = CLIPScorer.from_folder(ASSETS / "priors" / "toy-clip")
    prompts = all_prompts()
    chosen = spread_subset(prompts, 30)
    images = []
    for k, prompt in enumerate(chosen):
        cams = orbit_cameras(25.0 * k, 15.0, 3.2, 40.0)
        img, _ = render_scene(scene_for_prompt(prompt), cams, 64, torch.full((1, 3), 0.7))
        images.append(linear_to_srgb(img))
    feats = clip.image_features(torch.cat(images).permute(0, 3, 1, 2))
    best = (feats @ clip.text_features(prompts).T).argmax(-1)
    hits = sum(prompts[int(i)] == p for i, p in zip(best, chosen))
    assert hits / len(chosen) >= 0.6  # chance is 1/750; the trained CLIP scores 0.83 on random views
