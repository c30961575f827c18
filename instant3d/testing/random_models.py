"""Randomly initialised CLIP models saved in their real folder layouts, for tests, benchmarks and smoke runs.

They use the real classes (``CLIPTokenizer``, ``CLIPTextModel``, ``CLIPModel``) so that the loading code is
the same one that loads Stable Diffusion 2.1's text encoder or CLIP ViT-L/14. The tokenizer is a byte-level
BPE with no merges: every byte is a token, so any text (emoji, right-to-left, accents) encodes.
"""

from __future__ import annotations

from pathlib import Path

import torch


def byte_level_clip_tokenizer(max_length: int):
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    alphabet = sorted(ByteLevel.alphabet())
    vocab = alphabet + [c + "</w>" for c in alphabet] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=[], model_max_length=max_length)


def _text_config(tokenizer, hidden: int, layers: int, heads: int, max_length: int) -> dict:
    return dict(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )


def save_random_clip_text(folder, layout: str = "sd", hidden: int = 32, layers: int = 2, heads: int = 2,
                          max_length: int = 16, seed: int = 0) -> Path:
    """A random CLIP text encoder. layout "sd": ``tokenizer/`` + ``text_encoder/`` (Stable Diffusion);
    layout "clip": a full ``CLIPModel`` (text + vision towers) with its tokenizer in one folder."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel

    from instant3d.models.text_encoder import quiet_transformers

    with quiet_transformers():
        return _save(folder, layout, hidden, layers, heads, max_length, seed,
                     CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel)


def _save(folder, layout, hidden, layers, heads, max_length, seed, CLIPConfig, CLIPModel, CLIPTextConfig,  # noqa: N803
          CLIPTextModel):
    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = byte_level_clip_tokenizer(max_length)
    text = _text_config(tokenizer, hidden, layers, heads, max_length)
    if layout == "sd":
        CLIPTextModel(CLIPTextConfig(**text)).save_pretrained(folder / "text_encoder")
        tokenizer.save_pretrained(folder / "tokenizer")
    elif layout == "clip":
        vision = dict(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, image_size=32, patch_size=8)
        CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=hidden)).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    else:
        raise ValueError(f"layout must be 'sd' or 'clip', got {layout!r}")
    return folder


def random_small_pipeline(device: str = "cpu"):
    """A ``small``-preset pipeline with random weights and a random CLIP text tower of the toy world's size:
    every stage runs at its real cost, but the object is noise. For the demo and app before a checkpoint exists."""
    import tempfile

    from instant3d.config import preset_config
    from instant3d.models.model import Instant3DModel
    from instant3d.pipeline import Instant3DPipeline
    from instant3d.models.text_encoder import TextEncoder

    folder = save_random_clip_text(Path(tempfile.mkdtemp(prefix="instant3d-random-")) / "clip", hidden=128,
                                   layers=4, heads=4, max_length=32)
    text_encoder = TextEncoder.from_folder(folder, device)
    torch.manual_seed(0)
    model = Instant3DModel(preset_config("small", num_tokens=32, token_dim=128))
    return Instant3DPipeline(model, text_encoder, device)
