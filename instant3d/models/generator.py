"""Text tokens + style noise -> triplane (the paper, §3.1-3.2).

The decoder uses diffusers' own blocks, as the official code does: ``ResnetBlockCondNorm2D`` with
``ada_group`` norms (the style injection), ``Transformer2DModel`` for cross-attention to the tokens,
``Upsample2D`` (nearest x2 + 3x3 conv; or, per stage, a bilinear x2 before its conv) and ``TimestepEmbedding``
as the mapping network.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import TimestepEmbedding
from diffusers.models.resnet import ResnetBlockCondNorm2D, Upsample2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from torch import nn

from instant3d.config import GeneratorConfig, TextConfig


class EqualLinear(nn.Module):
    """Equalized-learning-rate linear layer (StyleGAN): weights ~ N(0, 1), scaled by 1/sqrt(fan_in) at run time.

    The official code uses it for the token-to-plane FC and the field MLP; with Adam it gives every layer
    the same effective step size, which plain ``nn.Linear`` init does not.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.gain = 1.0 / math.sqrt(in_features)

    def effective_weight(self) -> torch.Tensor:
        return self.weight * self.gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)


class L2TokenAttention(nn.Module):
    """GigaGAN text-transformer attention: shared Q=K projection, similarity = -L2 distance, a learned
    null key/value, and each token barred from attending to itself (official ``EoTTransfer``)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.to_qk = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.null_kv = nn.Parameter(torch.randn(2, heads, 1, self.head_dim))
        self.to_out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        split = lambda t: t.view(b, n, self.heads, self.head_dim).transpose(1, 2)  # noqa: E731
        q = split(self.to_qk(x))
        v = split(self.to_v(x))
        null_k, null_v = (t.expand(b, -1, -1, -1) for t in self.null_kv)
        k = torch.cat([null_k, q], dim=2)
        v = torch.cat([null_v, v], dim=2)
        sim = -torch.cdist(q, k) / math.sqrt(self.head_dim)
        self_mask = torch.eye(n, dtype=torch.bool, device=x.device)
        self_mask = F.pad(self_mask, (1, 0), value=False)  # the null key is never masked
        sim = sim.masked_fill(self_mask, -100.0)
        out = sim.softmax(dim=-1) @ v
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class TokenTransformerLayer(nn.Module):
    """Pre-RMSNorm attention + GELU feed-forward, residual, then a final RMSNorm (depth 1)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attn_norm = nn.RMSNorm(dim)
        self.attn = L2TokenAttention(dim, heads)
        self.ff_norm = nn.RMSNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.out_norm = nn.RMSNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        x = x + self.ff(self.ff_norm(x))
        return self.out_norm(x)


class TokenToVector(nn.Module):
    """Token embeddings (B, L, D) -> (B, out_features): linear, token transformer, flatten, equalized FC."""

    def __init__(self, num_tokens: int, token_dim: int, proj_dim: int, heads: int, out_features: int):
        super().__init__()
        self.proj = nn.Linear(token_dim, proj_dim)
        self.transformer = TokenTransformerLayer(proj_dim, heads)
        self.fc = EqualLinear(num_tokens * proj_dim, out_features)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(self.transformer(self.proj(tokens)).flatten(1))


class TokenToPlane(TokenToVector):
    """Token embeddings (B, L, D) -> base tensor (B, C0, h, w): the token-to-plane transform (the paper, §3.2.1)."""

    def __init__(self, text: TextConfig, cfg: GeneratorConfig):
        self.base_shape = (cfg.base_channels, cfg.base_resolution, cfg.base_resolution)
        super().__init__(text.num_tokens, text.token_dim, cfg.token_proj_dim, cfg.token_heads,
                         math.prod(self.base_shape))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return super().forward(tokens).view(-1, *self.base_shape)


class DecoderStage(nn.Module):
    """Res-blocks (style-modulated), each optionally followed by cross-attention, then x2 upsampling."""

    def __init__(self, in_ch, out_ch, layers, groups, cross_attention, cfg: GeneratorConfig, token_dim,
                 upsampling: str = "nearest"):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlockCondNorm2D(
                in_channels=in_ch if i == 0 else out_ch,
                out_channels=out_ch,
                temb_channels=cfg.style_dim,
                groups=groups,
                eps=1e-5,
                time_embedding_norm="ada_group",
            )
            for i in range(layers)
        )
        self.attentions = nn.ModuleList(
            _cross_attention(out_ch, groups, cfg, token_dim) for _ in range(layers) if cross_attention
        )
        # Same parameters either way (one 3x3 conv), so a checkpoint loads into both; bilinear doubles the
        # resolution here and lets Upsample2D run its conv only.
        self.upsampling = upsampling
        self.upsample = Upsample2D(out_ch, use_conv=True, interpolate=upsampling == "nearest")

    def forward(self, x, style, tokens):
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, style)
            if self.attentions:
                x = self.attentions[i](x, encoder_hidden_states=tokens, return_dict=False)[0]
        return self.double(x)

    def double(self, x: torch.Tensor) -> torch.Tensor:
        """x2 resolution, then the 3x3 conv."""
        if self.upsampling == "bilinear":
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.upsample(x)


def _cross_attention(channels: int, groups: int, cfg: GeneratorConfig, token_dim: int) -> Transformer2DModel:
    return Transformer2DModel(
        num_attention_heads=channels // cfg.attention_head_dim,
        attention_head_dim=cfg.attention_head_dim,
        in_channels=channels,
        norm_num_groups=groups,
        cross_attention_dim=token_dim,
        use_linear_projection=True,
    )


class TriplaneDecoder(nn.Module):
    """conv_in -> mid block (resnet, cross-attention, resnet) -> up stages -> GroupNorm/SiLU/conv -> planes."""

    def __init__(self, text: TextConfig, cfg: GeneratorConfig):
        super().__init__()
        chans, first = cfg.block_out_channels, cfg.block_out_channels[0]
        self.conv_in = nn.Conv2d(cfg.base_channels, first, 3, padding=1)
        resnet = lambda: ResnetBlockCondNorm2D(  # noqa: E731
            in_channels=first, out_channels=first, temb_channels=cfg.style_dim, groups=cfg.norm_groups[0],
            eps=1e-5, time_embedding_norm="ada_group",
        )
        self.mid_resnets = nn.ModuleList([resnet(), resnet()])
        self.mid_attention = (
            _cross_attention(first, cfg.norm_groups[0], cfg, text.token_dim) if cfg.mid_cross_attention else None
        )
        stages, in_ch = [], first
        modes = cfg.upsampling or ("nearest",) * len(chans)
        for out_ch, att, groups, mode in zip(chans, cfg.cross_attention, cfg.norm_groups, modes):
            stages.append(DecoderStage(in_ch, out_ch, cfg.layers_per_block, groups, att, cfg, text.token_dim, mode))
            in_ch = out_ch
        self.stages = nn.ModuleList(stages)
        self.norm_out = nn.GroupNorm(cfg.norm_out_groups or cfg.norm_groups[-1], in_ch)
        self.conv_out = nn.Conv2d(in_ch, 3 * cfg.triplane_channels, 3, padding=1)
        self.triplane_channels = cfg.triplane_channels

    def forward(self, base: torch.Tensor, style: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(base)
        x = self.mid_resnets[0](x, style)
        if self.mid_attention is not None:
            x = self.mid_attention(x, encoder_hidden_states=tokens, return_dict=False)[0]
        x = self.mid_resnets[1](x, style)
        for stage in self.stages:
            x = stage(x, style, tokens)
        x = self.conv_out(F.silu(self.norm_out(x)))
        b, _, h, w = x.shape
        return x.view(b, 3, self.triplane_channels, h, w)


def mirror_planes_z(planes: torch.Tensor) -> torch.Tensor:
    """The triplane of the scene mirrored z -> -z: XZ flipped along its height (z), ZY along its width (z)."""
    xy, xz, zy = planes.unbind(dim=1)
    return torch.stack([xy, xz.flip(-2), zy.flip(-1)], dim=1)


class TriplaneGenerator(nn.Module):
    """(token embeddings, pooled embedding, noise z) -> triplane (B, 3, C, R, R), planes XY, XZ, ZY.

    Style injection: the mapping network turns [text vector, z] into a style vector that drives the
    adaptive group norm of every res-block. The text vector is the pooled embedding (our models) or, with
    ``style_text="tokens"``, a second token transformer's output (the official code). The paper's ablation (and
    our toy experiment) shows that without the noise the SDS-trained generator collapses to an empty scene.
    """

    def __init__(self, text: TextConfig, cfg: GeneratorConfig):
        super().__init__()
        self.cfg = cfg
        self.token_to_plane = TokenToPlane(text, cfg)
        if cfg.style_text == "tokens":
            self.style_text = TokenToVector(text.num_tokens, text.token_dim, cfg.token_proj_dim, cfg.token_heads,
                                            cfg.style_text_dim)
            style_text_dim = cfg.style_text_dim
        else:
            self.style_text = None
            style_text_dim = text.pooled_dim
        self.mapping = TimestepEmbedding(style_text_dim + cfg.z_dim, cfg.style_dim)
        self.decoder = TriplaneDecoder(text, cfg)

    def style(self, tokens: torch.Tensor, pooled: torch.Tensor | None, z: torch.Tensor) -> torch.Tensor:
        if self.style_text is not None:
            text = self.style_text(tokens)
        elif pooled is None:
            raise ValueError("this model's style takes the pooled text embedding: pass pooled_prompt_embeds")
        else:
            text = pooled
        return self.mapping(torch.cat([text, z], dim=-1))

    def forward(self, tokens: torch.Tensor, pooled: torch.Tensor | None, z: torch.Tensor) -> torch.Tensor:
        planes = self.decoder(self.token_to_plane(tokens), self.style(tokens, pooled, z), tokens)
        return mirror_planes_z(planes) if self.cfg.mirror_z else planes
