"""A frozen CLIP (transformers ``CLIPModel``, local folder) for the CLIP loss, adaptive Perp-Neg and evaluation.

Images are preprocessed in torch (resize + CLIP normalisation), not by the PIL-based processor, so the
CLIP loss stays differentiable with respect to the render.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from transformers.image_utils import OPENAI_CLIP_MEAN as CLIP_MEAN  # CLIP's own image normalisation
from transformers.image_utils import OPENAI_CLIP_STD as CLIP_STD

from instant3d.models.text_encoder import TOKENIZER_FILES, quiet_transformers


class CLIPError(ValueError):
    """A CLIP folder that cannot be used; the message names the problem."""


class CLIPScorer:
    def __init__(self, model, tokenizer):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.image_size = int(model.config.vision_config.image_size)
        self.max_length = int(model.config.text_config.max_position_embeddings)
        self._text_cache: dict[str, torch.Tensor] = {}

    @classmethod
    def from_folder(cls, folder, device="cpu") -> "CLIPScorer":
        from transformers import AutoTokenizer, CLIPModel

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise CLIPError(f"no CLIP model in {folder}: config.json is missing")
        if json.loads((folder / "config.json").read_text()).get("model_type") != "clip":
            raise CLIPError(f"{folder} does not hold a full CLIPModel (text and image towers)")
        if not list(folder.glob("*.safetensors")):
            raise CLIPError(f"no safetensors weights in {folder} (pickled weights are never loaded)")
        if not any((folder / name).is_file() for name in TOKENIZER_FILES):
            raise CLIPError(f"no tokenizer in {folder}")
        with quiet_transformers():
            model = CLIPModel.from_pretrained(folder, use_safetensors=True).to(device)
            tokenizer = AutoTokenizer.from_pretrained(folder)
        return cls(model, tokenizer)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Unit CLIP embeddings (B, E) of sRGB images (B, 3, H, W) in [0, 1]; differentiable."""
        x = F.interpolate(images.float(), size=(self.image_size, self.image_size), mode="bilinear",
                          align_corners=False, antialias=images.shape[-1] > self.image_size)
        mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
        out = self.model.get_image_features(pixel_values=((x - mean) / std).to(self.device))
        out = out if isinstance(out, torch.Tensor) else out.pooler_output
        return F.normalize(out, dim=-1)

    @torch.no_grad()
    def text_features(self, prompts: list[str]) -> torch.Tensor:
        """Unit CLIP embeddings (B, E) of prompts (the pooled end-of-text token, projected); cached."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            ids = self.tokenizer(missing, padding="max_length", max_length=self.max_length, truncation=True,
                                 return_tensors="pt").input_ids.to(self.device)
            out = self.model.get_text_features(input_ids=ids)
            out = out if isinstance(out, torch.Tensor) else out.pooler_output
            for p, f in zip(missing, F.normalize(out.float(), dim=-1)):
                self._text_cache[p] = f
        return torch.stack([self._text_cache[p] for p in prompts])

    def loss(self, image_features: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """The CLIP loss: mean of 1 - cos(image, text) (paper section 3.5)."""
        return (1 - (image_features * self.text_features(prompts)).sum(-1)).mean()
