"""The official Instant3D generator's state dict, read as this engine's model: its architecture from the tensor
shapes, and its tensor names mapped onto ours.

Everything that shapes show is read from them: token count and width, the token transformers' widths and heads,
the base tensor, style and noise widths, every decoder stage's channels, res-block count and cross-attention,
the triplane channels and the MLP. Two numbers never show in a shape, so they follow the official code's rules:

- cross-attention heads are 16 channels wide (the official ``attention_head_dim`` lists head counts, chosen so
  that every head is 16 wide: 5/10/20/20 heads over 80/160/320/320 channels);
- GroupNorm groups: the official decoder takes one ``norm_num_groups`` g for the mid block and the four up
  blocks, g/2 and g/4 for the two last stages, and g/2 for the final norm (each at least 1). The official code
  sets g = 32 / d for channels 320/d, ..., i.e. one group per 10 channels of its narrowest cross-attention stage
  (80 channels -> 8 groups in the release). We take g as the largest power of two at most that stage's channels
  / 8, which is the official value for every official width and also the one the reduced-width fixture was
  built with (32 channels, 4 groups). A checkpoint trained with another g converts with ``norm_groups=``, one with
  other heads with ``head_width=``.

The layout of the official decoder, in its own order: ``conv_in``, ``mid_block`` (resnet, attention, resnet),
``up_blocks.0..n-1`` (the first without attention), ``up_blocks_no_crossatt_1`` and ``_2``, ``conv_norm_out``,
``conv_out``; every up block ends in an upsampler. Ours runs the same stages in the same order as
``decoder.stages.0..n+1``.
"""

from __future__ import annotations

import math
import re

import torch

from instant3d.config import ConfigError, FieldConfig, GeneratorConfig, Instant3DConfig, RenderConfig, TextConfig
from instant3d.io.checkpoint import CheckpointError

HEAD_WIDTH = 16  # the official cross-attention heads' width at every size

TOKEN_TRANSFORMERS = {"text_eot_transfer": "generator.token_to_plane", "text_emb2eot": "generator.style_text"}
# official token-transformer suffix -> ours (depth 1: layers.0.0 = attention, layers.0.1 = feed-forward)
TOKEN_TRANSFORMER_NAMES = {
    "project_in.weight": "proj.weight",
    "project_in.bias": "proj.bias",
    "transformer.layers.0.0.norm.gamma": "transformer.attn_norm.weight",
    "transformer.layers.0.0.to_qk.weight": "transformer.attn.to_qk.weight",
    "transformer.layers.0.0.to_v.weight": "transformer.attn.to_v.weight",
    "transformer.layers.0.0.null_kv": "transformer.attn.null_kv",
    "transformer.layers.0.0.to_out.weight": "transformer.attn.to_out.weight",
    "transformer.layers.0.1.0.gamma": "transformer.ff_norm.weight",
    "transformer.layers.0.1.1.weight": "transformer.ff.0.weight",
    "transformer.layers.0.1.1.bias": "transformer.ff.0.bias",
    "transformer.layers.0.1.3.weight": "transformer.ff.2.weight",
    "transformer.layers.0.1.3.bias": "transformer.ff.2.bias",
    "transformer.norm.gamma": "transformer.out_norm.weight",
    "project_out.0.weight": "fc.weight",
    "project_out.0.bias": "fc.bias",
}


class OfficialLayoutError(CheckpointError):
    """The state dict is not the official generator's layout; the message names the tensors at fault."""


def _shape(state: dict, key: str) -> tuple[int, ...]:
    if key not in state:
        raise OfficialLayoutError(f"the official generator's tensor {key!r} is missing: this is not (all of) an "
                                  "Instant3D G_ema state dict")
    return tuple(state[key].shape)


def _indices(state: dict, pattern: str) -> list[int]:
    found = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return sorted(found)


def power_of_two_groups(channels: int) -> int:
    """The largest power of two at most channels / 8 (at least 1): the official GroupNorm count (module doc)."""
    return 2 ** max(0, int(math.floor(math.log2(max(channels // 8, 1)))))


def official_config(state: dict, norm_groups: int | None = None, head_width: int | None = None) -> Instant3DConfig:
    """The ``Instant3DConfig`` of an official ``G_ema`` state dict, from its shapes and the official conventions
    (``norm_groups`` and ``head_width`` override the two numbers shapes cannot show)."""
    proj_dim, token_dim = _shape(state, "text_eot_transfer.project_in.weight")
    _, heads, _ = _shape(state, "text_eot_transfer.transformer.layers.0.0.null_kv")
    base_numel, flat = _shape(state, "text_eot_transfer.project_out.0.weight")
    if flat % proj_dim:
        raise OfficialLayoutError(f"text_eot_transfer.project_out.0 reads {flat} values, not a whole number of "
                                  f"{proj_dim}-wide tokens")
    num_tokens = flat // proj_dim
    for name in TOKEN_TRANSFORMERS:
        if any(k.startswith(f"{name}.transformer.layers.1.") for k in state):
            raise OfficialLayoutError(f"{name} has more than one transformer layer; the engine reads depth 1, as "
                                      "the official code builds it")
    style_proj, style_token_dim = _shape(state, "text_emb2eot.project_in.weight")
    _, style_heads, _ = _shape(state, "text_emb2eot.transformer.layers.0.0.null_kv")
    if (style_proj, style_heads, style_token_dim) != (proj_dim, heads, token_dim):
        raise OfficialLayoutError(
            f"text_emb2eot is {style_proj} wide with {style_heads} heads over {style_token_dim}-d tokens, but "
            f"text_eot_transfer is {proj_dim} wide with {heads} heads over {token_dim}-d tokens; the engine "
            "builds both alike, as the official code does")
    style_text_dim = _shape(state, "text_emb2eot.project_out.0.weight")[0]
    mid_channels, base_channels, _, _ = _shape(state, "triplane_net.conv_in.weight")
    base_resolution = math.isqrt(base_numel // base_channels)
    if base_channels * base_resolution**2 != base_numel:
        raise OfficialLayoutError(f"text_eot_transfer gives {base_numel} values, not {base_channels} square "
                                  "channels for conv_in")
    style_dim, style_in = _shape(state, "triplane_net.time_embedding.linear_1.weight")
    z_dim = style_in - style_text_dim
    if z_dim <= 0:
        raise OfficialLayoutError(f"the mapping network reads {style_in} values, not text_emb2eot's "
                                  f"{style_text_dim} plus noise")

    stages = [f"triplane_net.up_blocks.{i}" for i in _indices(state, r"triplane_net\.up_blocks\.(\d+)\.")]
    stages += ["triplane_net.up_blocks_no_crossatt_1", "triplane_net.up_blocks_no_crossatt_2"]
    channels, attention, layers = [], [], set()
    for stage in stages:
        resnets = _indices(state, re.escape(stage) + r"\.resnets\.(\d+)\.")
        if not resnets:
            raise OfficialLayoutError(f"{stage} has no res-blocks; the official decoder has six up blocks")
        layers.add(len(resnets))
        channels.append(_shape(state, f"{stage}.resnets.0.conv1.weight")[0])
        attention.append(any(k.startswith(f"{stage}.attentions.") for k in state))
    if len(layers) != 1:
        raise OfficialLayoutError(f"the up blocks hold different numbers of res-blocks {sorted(layers)}; the "
                                  "official decoder gives every block layers_per_block + 1")
    if mid_channels != channels[0]:
        raise OfficialLayoutError(f"conv_in gives {mid_channels} channels but the first up block has {channels[0]}")
    narrowest_attention = channels[len(stages) - 3]  # the last cross-attention up block: official channels[0]
    g = norm_groups or power_of_two_groups(narrowest_attention)
    groups = [g] * (len(stages) - 2) + [max(g // 2, 1), max(g // 4, 1)]
    plane_out, last = _shape(state, "triplane_net.conv_out.weight")[:2]
    if plane_out % 3:
        raise OfficialLayoutError(f"conv_out gives {plane_out} channels, not three planes")
    mlp = _indices(state, r"decoder\.net\.(\d+)\.weight")
    hidden = tuple(_shape(state, f"decoder.net.{i}.weight")[0] for i in mlp[:-1])
    if not hidden or _shape(state, f"decoder.net.{mlp[-1]}.weight")[0] != 4:
        raise OfficialLayoutError("decoder.net is not an MLP ending in 4 outputs (density + albedo)")
    try:
        return Instant3DConfig(
            preset="official",
            text=TextConfig(num_tokens=num_tokens, token_dim=token_dim, pooled_dim=token_dim),
            generator=GeneratorConfig(
                token_proj_dim=proj_dim, token_heads=heads, base_channels=base_channels,
                base_resolution=base_resolution, z_dim=z_dim, style_dim=style_dim,
                block_out_channels=tuple(channels), cross_attention=tuple(attention), norm_groups=tuple(groups),
                layers_per_block=layers.pop(), mid_cross_attention=any(k.startswith("triplane_net.mid_block.attent")
                                                                       for k in state),
                attention_head_dim=head_width or HEAD_WIDTH, triplane_channels=plane_out // 3, style_text="tokens",
                style_text_dim=style_text_dim, norm_out_groups=max(g // 2, 1), mirror_z=True,
            ),
            field=FieldConfig(aggregation="mean", hidden_dims=hidden, bound=1.75, blob_density=10.0,
                              blob_radius=0.6, density_shift=1.0, albedo_activation="padded_sigmoid",
                              albedo_space="display"),
            render=RenderConfig(camera_radius=4.29, fov_deg=75.0),
        )
    except ConfigError as exc:
        raise OfficialLayoutError(f"the official shapes make no valid model: {exc}") from None


def _our_name(key: str, num_up_blocks: int) -> str | None:
    """Our name for an official tensor name, or None if it is not one of the generator's."""
    for official, ours in TOKEN_TRANSFORMERS.items():
        if key.startswith(official + "."):
            rest = TOKEN_TRANSFORMER_NAMES.get(key[len(official) + 1:])
            return f"{ours}.{rest}" if rest else None
    if key.startswith("decoder.net."):
        index, _, param = key[len("decoder.net."):].partition(".")
        return f"field.layers.{int(index) // 2}.{param}" if index.isdigit() and int(index) % 2 == 0 else None
    if not key.startswith("triplane_net."):
        return None
    key = key[len("triplane_net."):]
    rules = [
        (r"time_embedding\.", "generator.mapping."),
        (r"conv_in\.", "generator.decoder.conv_in."),
        (r"conv_norm_out\.", "generator.decoder.norm_out."),
        (r"conv_out\.", "generator.decoder.conv_out."),
        (r"mid_block\.resnets\.(\d+)\.", r"generator.decoder.mid_resnets.\1."),
        (r"mid_block\.attentions\.0\.", "generator.decoder.mid_attention."),
        (r"up_blocks\.(\d+)\.upsamplers\.0\.", r"generator.decoder.stages.\1.upsample."),
        (r"up_blocks\.(\d+)\.", r"generator.decoder.stages.\1."),
        (r"up_blocks_no_crossatt_1\.upsamplers\.0\.", f"generator.decoder.stages.{num_up_blocks}.upsample."),
        (r"up_blocks_no_crossatt_1\.", f"generator.decoder.stages.{num_up_blocks}."),
        (r"up_blocks_no_crossatt_2\.upsamplers\.0\.", f"generator.decoder.stages.{num_up_blocks + 1}.upsample."),
        (r"up_blocks_no_crossatt_2\.", f"generator.decoder.stages.{num_up_blocks + 1}."),
    ]
    for pattern, replacement in rules:
        if re.match(pattern, key):
            return re.sub("^" + pattern, replacement, key)
    return None


def official_to_ours(state: dict, expected: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """The official tensors under our names, checked against ``expected`` ({our name: shape}): every official
    tensor used, every one of ours filled, every shape equal; an error names the tensors otherwise."""
    num_up = len(_indices(state, r"triplane_net\.up_blocks\.(\d+)\."))
    out, unknown = {}, []
    for key, tensor in state.items():
        ours = _our_name(key, num_up)
        if ours is None or ours not in expected:
            unknown.append(key)
            continue
        if key.endswith("null_kv"):  # official (2, heads, head_dim), ours (2, heads, 1, head_dim)
            tensor = tensor.unsqueeze(2)
        out[ours] = tensor
    problems = []
    if unknown:
        problems.append(f"unexpected official tensors {unknown[:4]}{' ...' if len(unknown) > 4 else ''}")
    missing = sorted(set(expected) - set(out))
    if missing:
        problems.append(f"nothing in the file for {missing[:4]}{' ...' if len(missing) > 4 else ''}")
    for key in [k for k in out if tuple(out[k].shape) != expected[k]][:4]:
        problems.append(f"{key} is {tuple(out[key].shape)} in the file but the derived model needs {expected[key]}")
    if problems:
        raise OfficialLayoutError("the official state dict does not map onto the engine: " + "; ".join(problems))
    return {k: v.to(torch.float32).contiguous() for k, v in out.items()}
