"""Training configuration: readable TOML files in training/configs/, plus ``section.key=value`` overrides."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from instant3d.config import ConfigError, section_from_dict


@dataclass
class ModelSection:
    preset: str = "small"  # tiny | small | paper (text shape comes from the prior's text encoder)
    init_checkpoint: str = ""  # start from this checkpoint's weights (not a resume)
    text_encoder: str = ""  # condition the generator on this text encoder folder instead of the prior's own
    # The decoder's upsampling per stage, "nearest" or "bilinear" (generator.upsampling); empty: the preset's, or
    # init_checkpoint's. It has no weights, so a checkpoint can be fine-tuned into the other mode.
    upsampling: tuple[str, ...] = ()


@dataclass
class ObjectiveSection:
    mode: str = "sds"  # sds | supervised (photometric loss against ground-truth renders: prompt sets with exact scenes)
    mask_weight: float = 0.1  # supervised: weight of the coverage (opacity vs ground-truth mask) term
    depth_weight: float = 0.0  # supervised: weight of |rendered depth - true depth| on fully covered pixels
    detail_pixel_weight: float = 0.0  # supervised: extra weight of colour and coverage errors on small named parts
    normal_weight: float = 0.0  # supervised: weight of 1 - cos(field normal, exact normal) at true surface points
    normal_points: int = 512  # supervised: exact surface points a prompt, for normal_weight
    plane_smoothness: float = 0.0  # weight of the planes' L2 total variation (mean squared texel gaps, rows + columns)
    opacity_entropy: float = 0.0  # SDS only: weight of the binary entropy of each pixel's opacity (haze -> 0 or 1)
    opacity_sparsity: float = 0.0  # SDS only: weight of the mean opacity (fewer floaters; too much erases thin shapes)
    depth_variance: float = 0.0  # SDS only: weight of the z-variance of half-opaque rays: a thin surface, not a fog


@dataclass
class PriorSection:
    folder: str = ""  # Stable Diffusion-style folder: unet/ scheduler/ text_encoder/ tokenizer/ [vae/]
    guidance_scale: float = 100.0
    t_min: float = 0.02
    t_max: float = 0.98
    perp_neg: str = "adaptive"  # none | fixed | adaptive
    estimator: str = "sds"  # sds | csd | nfsd | asd (training/guidance.py says what each compares)
    negative_prompt: str = ""  # nfsd only: the prompt whose prediction is removed above t = 200
    t_max_final: float = 0.0  # timestep annealing: t_max falls linearly to this over optim.steps (0: off)
    w_min: float = 0.5  # adaptive Perp-Neg: negative weights x (w_min + C * w_delta)
    w_delta: float = 1.5
    half_precision: bool = True  # GPU only


@dataclass
class ClipSection:
    folder: str = ""  # transformers CLIPModel folder; needed for the CLIP loss and adaptive Perp-Neg
    weight: float = 0.1


@dataclass
class PromptSection:
    set: str = "animals"  # animals | portraits | file | any registered set
    file: str = ""
    train_fraction: float = 0.6
    split_seed: int = 0
    validation: list[str] = field(default_factory=list)  # prompts rendered to orbit videos during training
    detail_weight: float = 1.0  # prompts with small named parts (the set's detail_points) drawn this many times as often
    # prompts holding a word drawn that many times as often, e.g. {yellow = 3.0}; weights of several words multiply
    word_weights: dict[str, float] = field(default_factory=dict)


@dataclass
class RenderSection:
    resolution: int = 64
    samples: int = 64
    importance: int = 64
    radius: list[float] = field(default_factory=lambda: [3.0, 3.6])
    fov: list[float] = field(default_factory=lambda: [35.0, 45.0])
    elevation: list[float] = field(default_factory=lambda: [-20.0, 65.0])
    front_bias: float = 0.0
    shading: dict[str, float] = field(default_factory=lambda: {"albedo": 0.5, "lambertian": 0.4, "textureless": 0.1})
    ambient: float = 0.1
    close_up: float = 0.0  # probability that a view of a prompt with small named parts is a close-up of one of them
    close_up_zoom: list[float] = field(default_factory=lambda: [2.0, 4.0])  # the close-up's fov is divided by this
    close_up_back: float = 0.0  # share of close-ups aimed at the part's mirror image through z = 0, from behind
    supersample: int = 1  # k: k x k rays a pixel (k^2 the cost), averaged: the exact renders' anti-aliasing


@dataclass
class OptimSection:
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    batch_size: int = 8  # prompts per step per process
    grad_accum: int = 1
    steps: int = 10000
    ema_decay: float = 0.0  # 0 = no EMA
    lr_schedule: str = "constant"  # one of LR_SCHEDULES (diffusers' schedules over optim.steps)
    warmup_steps: int = 0  # needs a schedule with warm-up (all but "constant")
    alpha_start: float = 0.5  # scaled-sigmoid alpha: start, then linear to 1 over [alpha_begin, alpha_end]
    alpha_begin: int = 0
    alpha_end: int = 5000
    max_bad_steps: int = 10  # consecutive NaN/inf steps before the run stops


# diffusers.optimization schedules that need nothing but warm-up and total steps (piecewise_constant needs rules)
LR_SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")


@dataclass
class RunSection:
    output_dir: str = "runs/default"
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 10
    validate_every: int = 1000
    validation_frames: int = 24
    validation_size: int = 128


@dataclass
class SmokeSection:
    enabled: bool = False  # build tiny random prior + CLIP models under output_dir/smoke-models first


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    objective: ObjectiveSection = field(default_factory=ObjectiveSection)
    prior: PriorSection = field(default_factory=PriorSection)
    clip: ClipSection = field(default_factory=ClipSection)
    prompts: PromptSection = field(default_factory=PromptSection)
    render: RenderSection = field(default_factory=RenderSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)
    smoke: SmokeSection = field(default_factory=SmokeSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _apply(cfg: TrainConfig, data: dict, where: str) -> None:
    for section, values in data.items():
        if not any(f.name == section for f in dataclasses.fields(cfg)) or not isinstance(values, dict):
            raise ConfigError(f"{where}: unknown section [{section}]")
        try:
            setattr(cfg, section, section_from_dict(type(getattr(cfg, section)), values, section,
                                                    base=getattr(cfg, section)))
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None


def load_config(path=None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults, then the TOML file, then overrides like ``optim.lr=3e-4`` or ``prompts.set="portraits"``."""
    cfg = TrainConfig()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"training config {path} does not exist")
        _apply(cfg, tomllib.loads(path.read_text()), str(path))
    for item in overrides or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"override {item!r} must look like section.key=value")
        dotted, raw = item.split("=", 1)
        section, key = dotted.split(".", 1)
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # a bare string
        _apply(cfg, {section: {key: value}}, f"override {item!r}")
    check_config(cfg)
    return cfg


def check_config(cfg: TrainConfig) -> None:
    """Values a run would otherwise only trip over after loading its models."""
    o = cfg.optim
    if o.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"optim.lr_schedule must be one of {list(LR_SCHEDULES)}, got {o.lr_schedule!r}")
    if o.warmup_steps < 0:
        raise ValueError(f"optim.warmup_steps must be >= 0, got {o.warmup_steps}")
    if o.warmup_steps and o.lr_schedule == "constant":
        raise ValueError('optim.warmup_steps > 0 needs a schedule with warm-up, e.g. '
                         'optim.lr_schedule="constant_with_warmup" or "cosine"')
    p = cfg.prior
    if p.t_max_final and not p.t_min < p.t_max_final <= p.t_max:
        raise ValueError(f"prior.t_max_final must lie in (t_min, t_max] = ({p.t_min}, {p.t_max}], or be 0 (no "
                         f"annealing); got {p.t_max_final}")
    from .guidance import ESTIMATORS

    if p.estimator not in ESTIMATORS:
        raise ValueError(f"prior.estimator must be one of {list(ESTIMATORS)}, got {p.estimator!r}")
    r = cfg.render
    if not 0 <= r.close_up <= 1:
        raise ValueError(f"render.close_up is a probability in [0, 1], got {r.close_up}")
    if not 0 <= r.close_up_back <= 1:
        raise ValueError(f"render.close_up_back is a probability in [0, 1], got {r.close_up_back}")
    if isinstance(r.supersample, bool) or not isinstance(r.supersample, int) or not 1 <= r.supersample <= 4:
        raise ValueError(f"render.supersample is a whole number of rays per pixel side from 1 to 4, got "
                         f"{r.supersample!r}")
    if len(r.close_up_zoom) != 2 or not 1 <= r.close_up_zoom[0] <= r.close_up_zoom[1]:
        raise ValueError(f"render.close_up_zoom must be [low, high] with 1 <= low <= high, got {r.close_up_zoom}")
    if cfg.prompts.detail_weight <= 0:
        raise ValueError(f"prompts.detail_weight must be > 0 (1 draws every prompt alike), got "
                         f"{cfg.prompts.detail_weight}")
    for word, weight in cfg.prompts.word_weights.items():
        if not word or len(word.split()) != 1:
            raise ValueError(f"prompts.word_weights keys are single words, got {word!r}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
            raise ValueError(f"prompts.word_weights.{word} must be a number > 0 (1 draws as often as any other "
                             f"prompt), got {weight!r}")
    ob = cfg.objective
    if ob.detail_pixel_weight < 0:
        raise ValueError(f"objective.detail_pixel_weight must be >= 0, got {ob.detail_pixel_weight}")
    if ob.detail_pixel_weight and ob.mode != "supervised":
        raise ValueError("objective.detail_pixel_weight weighs errors against ground-truth renders, so it needs "
                         "objective.mode = \"supervised\"")
    if ob.plane_smoothness < 0:
        raise ValueError(f"objective.plane_smoothness must be >= 0 (0 turns it off), got {ob.plane_smoothness}")
    if ob.normal_weight < 0 or ob.normal_points < 1:
        raise ValueError(f"objective.normal_weight must be >= 0 and objective.normal_points >= 1, got "
                         f"{ob.normal_weight} and {ob.normal_points}")
    if ob.normal_weight and ob.mode != "supervised":
        raise ValueError("objective.normal_weight compares the field's normals with the exact scenes' own, so it "
                         "needs objective.mode = \"supervised\"")
    if ob.mode == "supervised" and (ob.opacity_entropy or ob.opacity_sparsity or ob.depth_variance):
        raise ValueError("objective.opacity_entropy / opacity_sparsity / depth_variance apply to SDS only; the "
                         "supervised objective already fits opacity and depth to the ground truth: set them to 0")
