"""Tiny randomly initialised priors in their real folder layouts: a Stable Diffusion-style folder (UNet,
scheduler, CLIP text encoder, tokenizer, optionally a VAE) and a full CLIPModel. For the smoke config and tests:
the loading code is the one that loads Stable Diffusion 2.1 and CLIP ViT-L/14."""

from __future__ import annotations

from pathlib import Path

import torch

from instant3d.testing.random_models import save_random_clip_text
from instant3d.models.text_encoder import quiet_transformers


def save_random_prior(folder, latent: bool = False, text_hidden: int = 32, max_length: int = 77,
                      sample_size: int = 16, seed: int = 0) -> Path:
    """unet/ + scheduler/ + text_encoder/ + tokenizer/ (+ vae/ when ``latent``), all tiny and random."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    folder = Path(folder)
    save_random_clip_text(folder, layout="sd", hidden=text_hidden, max_length=max_length, seed=seed)
    torch.manual_seed(seed)
    channels = 4 if latent else 3
    unet = UNet2DConditionModel(
        sample_size=sample_size // 2 if latent else sample_size, in_channels=channels, out_channels=channels,
        layers_per_block=1, block_out_channels=(16, 32), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=text_hidden, attention_head_dim=8,
        norm_num_groups=8,
    )
    with quiet_transformers():
        unet.save_pretrained(folder / "unet")
        DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder / "scheduler")
        if latent:
            AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                          down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                          norm_num_groups=8, sample_size=sample_size).save_pretrained(folder / "vae")
    return folder


def save_random_clip(folder, seed: int = 1) -> Path:
    """A tiny full CLIPModel (text + image towers, 32-px images) with a byte-level tokenizer."""
    return save_random_clip_text(folder, layout="clip", seed=seed)
