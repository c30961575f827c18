"""One configuration object that fully describes a model, saved beside its weights as config.json.

Presets:
- ``paper``: the official Instant3D code's shapes (77x1024 tokens, 4x4x512 base tensor, decoder channels
  320/320/160/80/80/40 with cross-attention at 4/8/16/32, 3x32x256^2 triplane, MLP 32->64->4).
- ``small``: the CPU default, sized for the budgets in docs/DESIGN.md §5 (prompt -> triplane <= 30 ms).
- ``tiny``: for tests (builds and runs in milliseconds).
- ``official``: the official release's generator as ``instant3d.convert_official`` converts it (paper shapes plus
  the official code's conventions).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any


UPSAMPLING_MODES = ("nearest", "bilinear")


class ConfigError(ValueError):
    """A configuration that cannot describe a model (unknown key, wrong type, inconsistent sizes)."""


@dataclass
class TextConfig:
    """What the generator expects from the text encoder; checked against the encoder at load time."""

    num_tokens: int = 77  # the tokenizer's max length; prompts are padded to it, as Stable Diffusion does
    token_dim: int = 1024  # hidden size of the text model (last_hidden_state width)
    pooled_dim: int = 1024  # width of the pooled (end-of-text) embedding


@dataclass
class GeneratorConfig:
    """Token-to-plane transform, mapping network and triplane decoder (the paper, §3.1-3.2)."""

    token_proj_dim: int = 192  # Linear D -> this before the token transformer
    token_heads: int = 8  # heads of the GigaGAN-style token transformer layer
    base_channels: int = 512  # channels of the base tensor
    base_resolution: int = 4  # base tensor is base_channels x base_resolution^2
    z_dim: int = 768  # style noise width
    style_dim: int = 320  # mapping network output (drives every adaptive group norm)
    block_out_channels: tuple[int, ...] = (320, 320, 160, 80, 80, 40)  # one decoder stage each, x2 upsampling
    cross_attention: tuple[bool, ...] = (False, True, True, True, False, False)
    norm_groups: tuple[int, ...] = (8, 8, 8, 8, 4, 2)
    layers_per_block: int = 13  # res-blocks per stage (the official code's 12 + 1)
    mid_cross_attention: bool = True  # mid block = resnet, cross-attention, resnet at the base resolution
    attention_head_dim: int = 16
    triplane_channels: int = 32  # channels per plane
    # The text half of the style input: "pooled" = the text encoder's pooled embedding (our models); "tokens" = a
    # second token transformer over the token embeddings, style_text_dim wide (the official code's text_emb2eot).
    style_text: str = "pooled"
    style_text_dim: int = 768
    norm_out_groups: int = 0  # groups of the GroupNorm before conv_out (0: the last stage's norm_groups)
    # Flip the decoded XZ plane along z and the ZY plane along z, i.e. mirror the scene z -> -z. Converted official
    # checkpoints need it: their camera frame is left-handed and their front faces -z (docs/official-checkpoint.md).
    mirror_z: bool = False
    # How each decoder stage doubles its resolution before its 3x3 conv: "nearest" (diffusers' Upsample2D, the
    # official code) or "bilinear". Empty: nearest in every stage. Nearest copies each texel into a 2x2 block that
    # the convs must smooth away; what they leave shows as ripples on flat and round surfaces (docs/toyworld.md).
    upsampling: tuple[str, ...] = ()

    @property
    def triplane_resolution(self) -> int:
        return self.base_resolution * 2 ** len(self.block_out_channels)


@dataclass
class FieldConfig:
    """Triplane sampling, the MLP and the activations of density and albedo."""

    aggregation: str = "mean"  # "mean" (official code) or "concat" (paper text)
    hidden_dims: tuple[int, ...] = (64,)
    bound: float = 1.0  # the object lives in [-bound, bound]^3
    blob_density: float = 10.0  # density blob g(x) = blob_density * (1 - |x| / blob_radius)
    blob_radius: float = 0.6
    density_shift: float = 1.0  # sigma = softplus(raw + blob - shift)
    albedo_alpha: float = 1.0  # scaled-sigmoid alpha used at inference (1 = plain sigmoid)
    # "scaled_sigmoid": (1/alpha) sigmoid(alpha x) (the paper); "padded_sigmoid": 1.002 sigmoid(x) - 0.001 (the
    # official code's evaluation branch, which its released generator was trained to).
    albedo_activation: str = "scaled_sigmoid"
    # "linear": albedo is linear RGB, shown through the sRGB curve (our models); "display": albedo is already a
    # display value, shown as is (the official model, whose images were saved without a transfer curve).
    albedo_space: str = "linear"


@dataclass
class RenderConfig:
    """Defaults of the renderer and of the preview camera."""

    num_samples: int = 64  # stratified samples per ray (full renderer)
    num_importance: int = 64  # importance samples per ray (full renderer)
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    camera_radius: float = 3.2
    fov_deg: float = 40.0
    preview_grid: int = 96  # resolution of the baked grid of the fast preview
    preview_step: float = 1.0  # preview ray-march step in grid voxels
    preview_occupancy: float = 0.1  # density (per world unit) below which the preview skips a voxel


@dataclass
class Instant3DConfig:
    preset: str = "custom"
    text: TextConfig = dataclasses.field(default_factory=TextConfig)
    generator: GeneratorConfig = dataclasses.field(default_factory=GeneratorConfig)
    field: FieldConfig = dataclasses.field(default_factory=FieldConfig)
    render: RenderConfig = dataclasses.field(default_factory=RenderConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        g, f = self.generator, self.field
        n = len(g.block_out_channels)
        if not (len(g.cross_attention) == len(g.norm_groups) == n) or n == 0:
            raise ConfigError(
                "generator.block_out_channels, cross_attention and norm_groups must have the same, non-zero "
                f"length (got {n}, {len(g.cross_attention)}, {len(g.norm_groups)})"
            )
        first = g.block_out_channels[0]
        for name, ch, groups in [("mid", first, g.norm_groups[0])] + list(
            zip(map(str, range(n)), g.block_out_channels, g.norm_groups)
        ):
            if ch % groups:
                raise ConfigError(f"decoder stage {name}: {ch} channels are not divisible by {groups} norm groups")
        for ch, att in zip(g.block_out_channels, g.cross_attention):
            if att and ch % g.attention_head_dim:
                raise ConfigError(f"{ch} channels are not divisible by attention_head_dim {g.attention_head_dim}")
        if g.upsampling and len(g.upsampling) != n:
            raise ConfigError(f"generator.upsampling names {len(g.upsampling)} stages but the decoder has {n} "
                              "(give one mode per entry of block_out_channels, or none for nearest everywhere)")
        bad = [m for m in g.upsampling if m not in UPSAMPLING_MODES]
        if bad:
            raise ConfigError(f"generator.upsampling: unknown mode(s) {bad}; use {' or '.join(UPSAMPLING_MODES)}")
        if g.style_text not in ("pooled", "tokens"):
            raise ConfigError(f"generator.style_text must be 'pooled' or 'tokens', got {g.style_text!r}")
        if g.norm_out_groups < 0 or (g.norm_out_groups and g.block_out_channels[-1] % g.norm_out_groups):
            raise ConfigError(f"generator.norm_out_groups {g.norm_out_groups} does not divide the last stage's "
                              f"{g.block_out_channels[-1]} channels")
        if g.token_proj_dim % g.token_heads:
            raise ConfigError(f"token_proj_dim {g.token_proj_dim} is not divisible by token_heads {g.token_heads}")
        if not f.hidden_dims:
            raise ConfigError("field.hidden_dims must name at least one hidden layer")
        if f.aggregation not in ("mean", "concat"):
            raise ConfigError(f"field.aggregation must be 'mean' or 'concat', got {f.aggregation!r}")
        if not 0 < f.albedo_alpha <= 1:
            raise ConfigError(f"field.albedo_alpha must be in (0, 1], got {f.albedo_alpha}")
        if f.albedo_activation not in ("scaled_sigmoid", "padded_sigmoid"):
            raise ConfigError("field.albedo_activation must be 'scaled_sigmoid' or 'padded_sigmoid', got "
                              f"{f.albedo_activation!r}")
        if f.albedo_space not in ("linear", "display"):
            raise ConfigError(f"field.albedo_space must be 'linear' or 'display', got {f.albedo_space!r}")
        if f.bound <= 0:
            raise ConfigError(f"field.bound must be positive, got {f.bound}")
        if self.text.num_tokens < 1 or self.text.token_dim < 1:
            raise ConfigError("text.num_tokens and text.token_dim must be positive")

    def with_upsampling(self, upsampling) -> "Instant3DConfig":
        """This config with the decoder stages doubling as ``upsampling`` says (one mode per stage); validated."""
        return dataclasses.replace(self, generator=dataclasses.replace(self.generator, upsampling=tuple(upsampling)))

    # -- serialisation -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Instant3DConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"a model configuration must be a JSON object, got {type(data).__name__}")
        sections = {"text": TextConfig, "generator": GeneratorConfig, "field": FieldConfig, "render": RenderConfig}
        unknown = set(data) - set(sections) - {"preset"}
        if unknown:
            raise ConfigError(f"unknown configuration keys: {sorted(unknown)}")
        kwargs: dict[str, Any] = {"preset": str(data.get("preset", "custom"))}
        for name, section_cls in sections.items():
            kwargs[name] = section_from_dict(section_cls, data.get(name, {}), name)
        return cls(**kwargs)


def section_from_dict(section_cls, data: Any, name: str, base=None):
    """A ``section_cls`` dataclass from ``data`` over ``base`` (default: the class defaults), each value checked
    against the type of its default. The one typed loader of the project: model configs (JSON) and training
    configs (TOML and overrides) both go through it, so a key or a type is refused the same way everywhere."""
    if not isinstance(data, dict):
        raise ConfigError(f"configuration section {name!r} must be an object")
    fields = {f.name: f for f in dataclasses.fields(section_cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ConfigError(f"unknown keys in configuration section {name!r}: {sorted(unknown)}")
    defaults = base if base is not None else section_cls()
    values = {}
    for key, value in data.items():
        values[key] = _typed_value(getattr(defaults, key), value, f"{name}.{key}")
    return dataclasses.replace(defaults, **values)


def _typed_value(default: Any, value: Any, where: str) -> Any:
    if isinstance(default, (tuple, list)):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        if default and all(isinstance(d, float) for d in default):
            value = [_typed_value(0.0, v, where) for v in value]
        return type(default)(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        value = float(value)
    elif isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, got {value!r}")
    return value


# -- presets -----------------------------------------------------------------------------------------
def paper_config() -> Instant3DConfig:
    """The official code's shapes: SD 2.1 text tokens (77 x 1024) and a ~270 M-parameter decoder."""
    return Instant3DConfig(
        preset="paper",
        text=TextConfig(num_tokens=77, token_dim=1024, pooled_dim=1024),
        generator=GeneratorConfig(),
        field=FieldConfig(aggregation="mean", hidden_dims=(64,), bound=1.75),
        render=RenderConfig(camera_radius=4.29, fov_deg=45.0),
    )


def small_config(num_tokens: int = 32, token_dim: int = 128, pooled_dim: int | None = None) -> Instant3DConfig:
    """CPU default: a 3 x 16 x 64^2 triplane from a ~2 M-parameter decoder, MLP 16 -> 32 -> 4.

    Sized by docs/DESIGN.md §5 (prompt -> triplane <= 30 ms on 2 cores)
    (render cost scales with feature width x MLP width; plane resolution matters little to it).
    """
    return Instant3DConfig(
        preset="small",
        text=TextConfig(num_tokens=num_tokens, token_dim=token_dim, pooled_dim=pooled_dim or token_dim),
        generator=GeneratorConfig(
            token_proj_dim=64,
            token_heads=4,
            base_channels=128,
            base_resolution=4,
            z_dim=64,
            style_dim=128,
            block_out_channels=(128, 64, 32, 16),
            cross_attention=(True, True, False, False),
            norm_groups=(8, 8, 8, 4),
            layers_per_block=1,
            mid_cross_attention=True,
            attention_head_dim=16,
            triplane_channels=16,
        ),
        field=FieldConfig(aggregation="mean", hidden_dims=(32,)),
        render=RenderConfig(num_samples=64, num_importance=64),
    )


def tiny_config(num_tokens: int = 16, token_dim: int = 32, pooled_dim: int | None = None) -> Instant3DConfig:
    """For tests: builds in milliseconds, still exercises every block type."""
    return Instant3DConfig(
        preset="tiny",
        text=TextConfig(num_tokens=num_tokens, token_dim=token_dim, pooled_dim=pooled_dim or token_dim),
        generator=GeneratorConfig(
            token_proj_dim=16,
            token_heads=2,
            base_channels=16,
            base_resolution=4,
            z_dim=8,
            style_dim=16,
            block_out_channels=(16, 8),
            cross_attention=(True, False),
            norm_groups=(4, 2),
            layers_per_block=1,
            mid_cross_attention=True,
            attention_head_dim=8,
            triplane_channels=8,
        ),
        field=FieldConfig(aggregation="mean", hidden_dims=(16,)),
        render=RenderConfig(num_samples=16, num_importance=16, preview_grid=32),
    )


def official_config() -> Instant3DConfig:
    """The official release's generator as converted (``python -m instant3d.convert_official``): the paper preset's
    shapes plus the official code's conventions (docs/official-checkpoint.md): style from a second token
    transformer, final norm 4 groups, padded-sigmoid albedo in display space, the scene mirrored z -> -z, box 1.75,
    fov 75. 269 769 476 parameters, exactly the official file's."""
    cfg = paper_config()
    cfg.preset = "official"
    cfg.generator = dataclasses.replace(cfg.generator, style_text="tokens", style_text_dim=768, norm_out_groups=4,
                                        mirror_z=True)
    cfg.field = dataclasses.replace(cfg.field, albedo_activation="padded_sigmoid", albedo_space="display")
    cfg.render = RenderConfig(camera_radius=4.29, fov_deg=75.0)
    return cfg


PRESETS = {"paper": paper_config, "small": small_config, "tiny": tiny_config, "official": official_config}


def preset_config(name: str, **text_shape: int) -> Instant3DConfig:
    """A preset by name; ``text_shape`` (num_tokens, token_dim, pooled_dim) adapts it to a text encoder."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    if name in ("paper", "official"):
        cfg = PRESETS[name]()
        for key, value in text_shape.items():
            if value is not None:
                setattr(cfg.text, key, value)
        return cfg
    return PRESETS[name](**text_shape)
