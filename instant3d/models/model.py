"""The trainable model: the triplane generator plus the field MLP that reads its triplanes."""

from __future__ import annotations

import torch
from torch import nn

from instant3d.config import Instant3DConfig
from instant3d.models.field import TriplaneField
from instant3d.models.generator import TriplaneGenerator


class Instant3DModel(nn.Module):
    """Everything a checkpoint's model.safetensors holds; the text encoder is stored beside it."""

    def __init__(self, config: Instant3DConfig):
        super().__init__()
        self.config = config
        self.generator = TriplaneGenerator(config.text, config.generator)
        self.field = TriplaneField(config.field, config.generator.triplane_channels)

    def forward(self, tokens: torch.Tensor, pooled: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Triplanes (B, 3, C, R, R) for token embeddings (B, L, D), pooled (B, D) and style noise (B, z_dim)."""
        return self.generator(tokens, pooled, z)

    def with_upsampling(self, upsampling) -> "Instant3DModel":
        """The same weights in a model whose decoder stages upsample as ``upsampling`` says (one mode per stage).

        Upsampling has no parameters, so the state dict carries over exactly; the new mode is saved in config.json."""
        changed = Instant3DModel(self.config.with_upsampling(upsampling))
        changed.load_state_dict(self.state_dict(), strict=True)
        return changed.to(next(self.parameters()).device).train(self.training)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
