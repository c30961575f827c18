"""The Instant3D trainer: SDS + CLIP loss + (adaptive) Perp-Neg + scaled-sigmoid annealing, amortised over a
prompt set; one process or many (``torchrun``, DistributedDataParallel).

Every step: a batch of prompts (each rank draws from its own shard), fresh style noise z, one random camera,
background and shading mode per prompt; the generator makes triplanes, the renderer makes images (64^2 by
default), and the losses come from the diffusion prior (SDS) and CLIP. Checkpoints are the engine's format plus
the trainer's state (safetensors + JSON, never pickles), written atomically; a crashed run resumes from the
newest readable checkpoint. A step whose loss or gradients are not finite is skipped and counted; too many in a
row stop the run with a message, leaving the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from instant3d.render.cameras import Cameras, generate_rays
from instant3d.io.checkpoint import CheckpointError, load_model, save_checkpoint
from instant3d.render.color import linear_to_srgb, linear_to_srgb_unbounded, to_display
from instant3d.config import preset_config
from instant3d.io.files import remove_stale_temporaries
from instant3d.models.model import Instant3DModel
from instant3d.pipeline import Instant3DOutput, seed_noise
from instant3d.vocabulary import TRAINING_PROMPTS_NAME
from instant3d.render.renderer import render_rays
from instant3d.models.text_encoder import TextEncoder

from .clip_model import CLIPScorer
from .config import TrainConfig
from .guidance import DiffusionGuidance
from .perpneg import SeverityCache, adaptive_scale
from .prompt_sets import detail_points_finder, ground_truth_renderer, load_prompt_set, surface_normals_sampler
from .sampling import CameraRanges, alpha_schedule, close_up_views, sample_views
from .state import load_optimizer_state, optimizer_state

log = logging.getLogger("instant3d.train")
STATE_TENSORS = "trainer_state.safetensors"
STATE_JSON = "trainer_state.json"
STEP_DIR = re.compile(r"^step-(\d+)$")


def kept_ema(folder: Path, meta: dict | None = None) -> bool:
    """Does this checkpoint's model.safetensors hold EMA weights? A training step folder does when its run had
    ``optim.ema_decay`` > 0; a checkpoint made from one by the colour calibration says so in ``meta``."""
    if (meta or {}).get("colour_calibration", {}).get("ema"):
        return True
    state = Path(folder) / STATE_JSON
    if not state.is_file():
        return False
    return json.loads(state.read_text()).get("config", {}).get("optim", {}).get("ema_decay", 0) > 0


def block_mean(per_ray: torch.Tensor, batch: int, res: int, k: int) -> torch.Tensor:
    """Per-ray values (B, (res k)^2, ...) of a k x k supersampled render -> per-pixel means (B, res^2, ...): the
    field's colours (linear for our models) and opacities averaged as the toy world's exact renders average their
    sub-pixels. Depths are plain means too, which equal the surface's mean distance where a pixel is fully covered,
    the only pixels the depth term compares."""
    if k == 1:
        return per_ray
    extra = per_ray.shape[2:]
    grid = per_ray.reshape(batch, res, k, res, k, *extra)
    return grid.mean(dim=(2, 4)).reshape(batch, res * res, *extra)


def draw_weight(prompt: str, prompts_cfg, detail_points=None) -> float:
    """How often ``prompt`` is drawn relative to a plain one: ``detail_weight`` if it names small parts, times the
    weight of each of ``word_weights``' words it holds (whole words, any case)."""
    weight = prompts_cfg.detail_weight if detail_points is not None and detail_points(prompt) else 1.0
    words = set(prompt.lower().replace(",", " ").split())
    for word, factor in prompts_cfg.word_weights.items():
        if word.lower() in words:
            weight *= factor
    return weight


class TrainingStopped(RuntimeError):
    """The run cannot go on (e.g. repeated non-finite losses); the message says why and what was kept."""


class GenerateAndRender(nn.Module):
    """What DistributedDataParallel wraps: prompts' embeddings + noise + rays -> rendered colours (linear), and,
    given ``surface_points`` (B, N, 3), the field's unit normals there, and with ``plane_smoothness`` the planes'
    roughness: the mean squared gap between neighbouring texels along rows plus that along columns (each else
    None)."""

    def __init__(self, model: Instant3DModel):
        super().__init__()
        self.model = model

    def forward(self, tokens, pooled, z, origins, dirs, render_options: dict, surface_points=None,
                plane_smoothness: bool = False):
        planes = self.model(tokens, pooled, z)
        out = render_rays(self.model.field, planes, origins, dirs, perturb=True, with_depth_variance=True,
                          **render_options)
        normals = None if surface_points is None else self.model.field.normals(planes, surface_points)
        roughness = None
        if plane_smoothness:  # an L2 total variation of the planes, as K-Planes regularises its planes
            roughness = ((planes[..., 1:, :] - planes[..., :-1, :]) ** 2).mean() + (
                (planes[..., :, 1:] - planes[..., :, :-1]) ** 2).mean()
        return out.color, out.opacity, out.depth, out.depth_variance, normals, roughness


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_pref: str) -> tuple[Distributed, torch.device]:
    """torchrun's environment -> a process group (NCCL on GPUs, gloo on CPUs) and this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    info = Distributed(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device_pref == "auto":
        device_pref = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(f"cuda:{info.local_rank}" if device_pref == "cuda" else device_pref)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    return info, device


def checkpoint_folders(folder: Path) -> list[Path]:
    """step-N folders, newest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.dist, self.device = setup_distributed(cfg.run.device)
        self.out = Path(cfg.run.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
        if cfg.smoke.enabled:
            self._prepare_smoke_models()
        torch.manual_seed(cfg.run.seed + self.dist.rank)
        self.guidance = DiffusionGuidance.from_folder(
            cfg.prior.folder, self.device, guidance_scale=cfg.prior.guidance_scale,
            t_range=(cfg.prior.t_min, cfg.prior.t_max), perp_neg=cfg.prior.perp_neg,
            estimator=cfg.prior.estimator, negative_prompt=cfg.prior.negative_prompt,
            half_precision=cfg.prior.half_precision,
        )
        # The generator is conditioned on the prior's text encoder (the paper's setting), unless the config names
        # another: the toy world's generators keep toy-clip while the prior's own text tower separates view words.
        self.text_encoder = (TextEncoder.from_folder(cfg.model.text_encoder, self.device) if cfg.model.text_encoder
                             else self.guidance.text_encoder)
        if cfg.objective.mode not in ("sds", "supervised"):
            raise ValueError(f"objective.mode must be 'sds' or 'supervised', got {cfg.objective.mode!r}")
        self.supervised = cfg.objective.mode == "supervised"
        needs_clip = not self.supervised and (cfg.clip.weight > 0 or cfg.prior.perp_neg == "adaptive")
        if needs_clip and not cfg.clip.folder:
            raise ValueError("clip.folder is empty, but the CLIP loss (clip.weight > 0) or adaptive Perp-Neg needs a "
                             "CLIP model: set clip.folder, or clip.weight=0 and prior.perp_neg=\"fixed\"")
        self.clip = CLIPScorer.from_folder(cfg.clip.folder, self.device) if needs_clip else None
        self.train_prompts, self.held_out = load_prompt_set(
            cfg.prompts.set, file=cfg.prompts.file, train_fraction=cfg.prompts.train_fraction,
            seed=cfg.prompts.split_seed,
        )
        self.ground_truth = ground_truth_renderer(cfg.prompts.set) if self.supervised else None
        self.surface_normals = surface_normals_sampler(cfg.prompts.set) if cfg.objective.normal_weight else None
        self.shard = self.train_prompts[self.dist.rank :: self.dist.world] or self.train_prompts
        self.detail_points = self.prompt_weights = None
        if cfg.render.close_up > 0 or cfg.prompts.detail_weight != 1:
            self.detail_points = detail_points_finder(cfg.prompts.set)
        if self.detail_points is not None or cfg.prompts.word_weights:
            self.prompt_weights = torch.tensor([draw_weight(p, cfg.prompts, self.detail_points) for p in self.shard])
        self.model = self._build_model().to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas))
        self.ema = None
        if cfg.optim.ema_decay > 0:
            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.optim.ema_decay))
        self.severity = SeverityCache()
        self.step, self.bad_steps_total = 0, 0
        self._resume()
        self.lr_scheduler = self._build_lr_scheduler()
        wrapped = GenerateAndRender(self.model)
        self.net = DistributedDataParallel(wrapped) if self.dist.world > 1 else wrapped
        self.ranges = CameraRanges(tuple(cfg.render.radius), tuple(cfg.render.fov), tuple(cfg.render.elevation),
                                   cfg.render.front_bias)
        self.writer = None

    # -- set-up -------------------------------------------------------------------------------------------------
    def _prepare_smoke_models(self) -> None:
        from instant3d.testing.random_priors import save_random_clip, save_random_prior

        root = self.out / "smoke-models"
        if self.dist.main and not (root / "ready").exists():
            save_random_prior(root / "prior")
            save_random_clip(root / "clip")
            (root / "ready").write_text("ok")
        if self.dist.world > 1:
            dist.barrier()
        self.cfg.prior.folder, self.cfg.clip.folder = str(root / "prior"), str(root / "clip")

    def _build_model(self) -> Instant3DModel:
        cfg = self.cfg
        if cfg.model.init_checkpoint:
            model, _ = load_model(cfg.model.init_checkpoint, "cpu")
            if cfg.model.upsampling:
                model = model.with_upsampling(cfg.model.upsampling)
            return model.train().requires_grad_(True)
        torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
        config = preset_config(cfg.model.preset, num_tokens=self.text_encoder.max_length,
                               token_dim=self.text_encoder.token_dim,
                               pooled_dim=int(self.text_encoder.model.config.hidden_size))
        if cfg.model.upsampling:
            config = config.with_upsampling(cfg.model.upsampling)
        return Instant3DModel(config).train()

    def _build_lr_scheduler(self):
        """diffusers' schedule over ``optim.steps``, positioned at the current step, so a resumed run with the same
        ``optim.steps`` continues its curve (changing ``optim.steps`` re-shapes the curve from here on)."""
        from diffusers.optimization import get_scheduler

        o = self.cfg.optim
        for group in self.optimizer.param_groups:
            group["initial_lr"] = o.lr  # the restored optimizer state holds the scheduled lr of its last step
        return get_scheduler(o.lr_schedule, self.optimizer, num_warmup_steps=o.warmup_steps,
                             num_training_steps=o.steps, last_epoch=self.step - 1)

    def _opacity_terms(self, opacity: torch.Tensor, depth_variance: torch.Tensor, stats: dict) -> torch.Tensor:
        """Optional regularisers of where light is absorbed (objective.opacity_entropy / _sparsity / depth_variance)."""
        o = self.cfg.objective
        total = torch.zeros((), device=opacity.device)
        if o.opacity_entropy > 0:
            a = opacity.clamp(1e-5, 1 - 1e-5)
            entropy = -(a * a.log() + (1 - a) * (1 - a).log()).mean()
            total = total + o.opacity_entropy * entropy
            stats["opacity_entropy"] = float(entropy.detach())
        if o.opacity_sparsity > 0:
            total = total + o.opacity_sparsity * opacity.mean()
        if o.depth_variance > 0:
            # normalised per ray and averaged over rays at least half opaque (as threestudio's z-variance loss):
            # the unnormalised sum is smallest for an empty ray, which would reward erasing the object
            solid = opacity.detach() > 0.5
            per_ray = depth_variance / opacity.clamp_min(1e-6)
            variance = (per_ray * solid).sum() / solid.sum().clamp_min(1)
            total = total + o.depth_variance * variance
            stats["depth_variance"] = float(variance.detach())
        return total

    # -- checkpoints --------------------------------------------------------------------------------------------
    def _state_files(self) -> dict[str, bytes]:
        tensors, opt_meta = optimizer_state(self.optimizer)
        if self.ema is not None:  # model.safetensors holds the EMA weights; keep the raw ones here
            for name, value in self.model.state_dict().items():
                tensors[f"raw.{name}"] = value.detach().cpu().contiguous()
            tensors["ema.n_averaged"] = self.ema.n_averaged.detach().cpu()
        prompts, severity = self.severity.state()
        tensors.update({f"severity.{k}": v.contiguous() for k, v in severity.items()})
        meta = {
            "step": self.step, "bad_steps_total": self.bad_steps_total, "optimizer": opt_meta,
            "severity_prompts": prompts, "world_size": self.dist.world,
            "views_per_prompt": self.views_per_prompt(), "config": self.cfg.to_dict(),
        }
        return {STATE_TENSORS: save_safetensors(tensors), STATE_JSON: json.dumps(meta, indent=2).encode()}

    def save(self) -> Path | None:
        """Write checkpoints/step-N atomically (rank 0) and keep the newest ``keep_checkpoints``."""
        if not self.dist.main:
            return None
        folder = self.ckpt_dir / f"step-{self.step:07d}"
        model = self.ema.module if self.ema is not None else self.model
        encoder_folder = self.cfg.model.text_encoder or self.cfg.prior.folder
        prior = os.path.relpath(Path(encoder_folder).resolve(), folder.resolve())
        files = {**self._state_files(), TRAINING_PROMPTS_NAME: ("\n".join(self.train_prompts) + "\n").encode()}
        save_checkpoint(model, folder, text_encoder_path=prior, extra_files=files,
                        extra={"training": {"step": self.step, "views_per_prompt": self.views_per_prompt(),
                                            "prompt_set": self.cfg.prompts.set, "prompt_file": self.cfg.prompts.file,
                                            "train_fraction": self.cfg.prompts.train_fraction,
                                            "split_seed": self.cfg.prompts.split_seed}})
        for old in checkpoint_folders(self.ckpt_dir)[self.cfg.run.keep_checkpoints :]:
            shutil.rmtree(old, ignore_errors=True)
        return folder

    def _resume(self) -> None:
        if self.dist.main:
            for path in remove_stale_temporaries(self.ckpt_dir):
                log.info("removed %s, left by an interrupted save", path)
        for folder in checkpoint_folders(self.ckpt_dir):
            try:
                saved, _ = load_model(folder, "cpu")
                meta = json.loads((folder / STATE_JSON).read_text())
                tensors = load_safetensors((folder / STATE_TENSORS).read_bytes())
            except (CheckpointError, SafetensorError, OSError, json.JSONDecodeError) as exc:
                log.warning("checkpoint %s is unreadable (%s); trying the one before it", folder, exc)
                continue
            raw = {k[4:]: v for k, v in tensors.items() if k.startswith("raw.")}
            self.model.load_state_dict(raw or saved.state_dict())
            if self.ema is not None:
                self.ema.module.load_state_dict(saved.state_dict())
                self.ema.n_averaged.copy_(tensors.get("ema.n_averaged", torch.tensor(meta["step"])))
            load_optimizer_state(self.optimizer, tensors, meta["optimizer"])
            if meta["severity_prompts"]:
                self.severity.load(meta["severity_prompts"],
                                   {k[9:]: v for k, v in tensors.items() if k.startswith("severity.")})
            self.step, self.bad_steps_total = int(meta["step"]), int(meta["bad_steps_total"])
            log.info("resumed from %s at step %d", folder, self.step)
            return

    # -- the step -----------------------------------------------------------------------------------------------
    def views_per_prompt(self) -> float:
        """Views-PP (paper Eq. 13): rendered views so far / training prompts."""
        o = self.cfg.optim
        return self.step * o.batch_size * o.grad_accum * self.dist.world / len(self.train_prompts)

    def compute_loss(self, gen: torch.Generator, alpha: float):
        cfg, b = self.cfg, self.cfg.optim.batch_size
        if self.prompt_weights is None:
            drawn = torch.randint(len(self.shard), (b,), generator=gen)
        else:
            drawn = torch.multinomial(self.prompt_weights, b, replacement=True, generator=gen)
        prompts = [self.shard[int(i)] for i in drawn]
        tokens, pooled = self.text_encoder.encode(prompts)
        z = torch.randn(b, self.model.config.generator.z_dim, generator=gen).to(self.device)
        views = sample_views(b, self.ranges, cfg.render.shading, gen, self.device)
        if cfg.render.close_up > 0:
            views = self._close_ups(prompts, views, gen)
        res, k = cfg.render.resolution, cfg.render.supersample
        origins, dirs = generate_rays(views.cameras, res * k)
        options = dict(num_samples=cfg.render.samples, num_importance=cfg.render.importance,
                       background=views.background, generator=gen, alpha=alpha, shading=views.shading,
                       light_dirs=views.light_dirs, ambient=cfg.render.ambient)
        surface = true_normals = None
        if self.surface_normals is not None:
            samples = [self.surface_normals(p, cfg.objective.normal_points, gen) for p in prompts]
            surface = torch.stack([s[0] for s in samples]).to(self.device)
            true_normals = torch.stack([s[1] for s in samples]).to(self.device)
        color, opacity, depth, depth_variance, normals, roughness = self.net(
            tokens, pooled, z, origins.reshape(b, -1, 3), dirs.reshape(b, -1, 3), options, surface,
            cfg.objective.plane_smoothness > 0)
        stats = {"opacity": float(opacity.detach().mean()), "shading": views.shading}
        smoothness = torch.zeros((), device=self.device)
        if roughness is not None:
            smoothness = cfg.objective.plane_smoothness * roughness
            stats["plane_roughness"] = float(roughness.detach())
        ray_opacity = opacity  # the regularisers of where light is absorbed act per ray
        color, opacity, depth = (block_mean(x, b, res, k) for x in (color, opacity, depth))
        # A model whose albedo is already a display value (a converted official one) is shown to losses as it is.
        display = self.model.config.field.albedo_space == "display"
        if self.supervised:
            images = to_display(color, self.model.config.field.albedo_space).view(b, res, res, 3).permute(0, 3, 1, 2)
            loss, stats = self._photometric_loss(prompts, views, images, opacity.view(b, res, res),
                                                 depth.view(b, res, res), stats)
            loss = loss + smoothness
            if normals is not None:  # ripples that colour and coverage barely see, but lit views show
                normal_error = (1 - (normals * true_normals).sum(dim=-1)).mean()
                loss = loss + cfg.objective.normal_weight * normal_error
                stats["normal_error"] = float(normal_error.detach())
            return loss, stats
        # priors see sRGB images; above 1 (scaled sigmoid, alpha < 1) the curve goes on so that gradients flow
        images = (color if display else linear_to_srgb_unbounded(color)).view(b, res, res, 3).permute(0, 3, 1, 2)
        negative_scale, clip_loss = None, torch.zeros((), device=self.device)
        if self.clip is not None:
            features = self.clip.image_features(images if cfg.clip.weight > 0 else images.detach())
            if cfg.prior.perp_neg == "adaptive":
                angles = torch.stack([views.azimuth, views.elevation], dim=-1)
                c = self.severity.update(prompts, features, angles)
                negative_scale = adaptive_scale(c, cfg.prior.w_min, cfg.prior.w_delta)
                stats["severity"] = c
            if cfg.clip.weight > 0:
                clip_loss = self.clip.loss(features, prompts)
        sds = self.guidance.sds(images, prompts, views.azimuth, views.elevation, negative_scale, gen,
                                t_max=self.annealed_t_max())
        loss = (sds.loss + cfg.clip.weight * clip_loss + self._opacity_terms(ray_opacity, depth_variance, stats)
                + smoothness)
        stats.update(sds=float(sds.loss.detach()), clip=float(clip_loss.detach()), sds_grad=sds.grad_norm)
        return loss, stats

    def _close_ups(self, prompts: list[str], views, gen: torch.Generator):
        """Turn each view of a prompt with small named parts, with probability ``render.close_up``, into a close-up
        of one of those parts (drawn at random); ``render.close_up_back`` of them look instead at the part's mirror
        image through z = 0 from behind, where a triplane's XY plane repeats the front part's features."""
        targets, chosen = torch.zeros(len(prompts), 3), torch.zeros(len(prompts), dtype=torch.bool)
        draws = torch.rand(len(prompts), 3, generator=gen) if self.cfg.render.close_up_back else torch.rand(
            len(prompts), 2, generator=gen)
        for i, prompt in enumerate(prompts):
            points = self.detail_points(prompt)
            if points and draws[i, 0] < self.cfg.render.close_up:
                targets[i] = torch.tensor(points[int(draws[i, 1] * len(points))])
                if self.cfg.render.close_up_back and draws[i, 2] < self.cfg.render.close_up_back:
                    targets[i, 2] = -targets[i, 2]
                chosen[i] = True
        if not chosen.any():
            return views
        return close_up_views(views, targets, chosen, self.ranges, tuple(self.cfg.render.close_up_zoom), gen)

    def annealed_t_max(self) -> float | None:
        """The largest diffusion timestep (a fraction) this step may draw: prior.t_max falling linearly to
        prior.t_max_final over the run (DreamTime, HiFA, ScaleDreamer anneal it too); None when not annealed."""
        p = self.cfg.prior
        if not p.t_max_final:
            return None
        progress = min(1.0, self.step / max(1, self.cfg.optim.steps))
        return p.t_max + (p.t_max_final - p.t_max) * progress

    def _photometric_loss(self, prompts, views, images, opacity, depth, stats):
        """The upper bound: the same renders compared with sphere-traced ground truth of the same views: colour,
        coverage and (``objective.depth_weight``) depth, which asks for a crisp surface instead of a thick fog that
        looks the same. ``objective.detail_pixel_weight`` adds that multiple of the colour and coverage errors on
        the pixels of small named parts: a nose covers a few dozen of a batch's 9 216 pixels, too few to be
        learnt at the plain mean."""
        o, res = self.cfg.objective, self.cfg.render.resolution
        targets, masks, depths, details = [], [], [], []
        for i, prompt in enumerate(prompts):
            cams = Cameras(views.cameras.rotation[i : i + 1].cpu(), views.cameras.position[i : i + 1].cpu(),
                           views.cameras.fov_deg[i : i + 1].cpu())
            img, mask, true_depth, detail = self.ground_truth(
                prompt, cams, res, views.background[i : i + 1].cpu(), views.shading,
                views.light_dirs[i : i + 1].cpu(), self.cfg.render.ambient)
            targets.append(img)
            masks.append(mask)
            depths.append(true_depth)
            details.append(detail)
        target = linear_to_srgb(torch.cat(targets)).permute(0, 3, 1, 2).to(self.device)
        mask = torch.cat(masks).to(self.device)
        pixel_weight = 1 + o.detail_pixel_weight * torch.cat(details).to(self.device)  # (B, H, W)
        colour_error = ((images - target) ** 2).mean(dim=1)
        loss = (pixel_weight * colour_error).mean() + o.mask_weight * (pixel_weight * (opacity - mask) ** 2).mean()
        stats["detail_pixels"] = float(torch.cat(details).sum())
        if o.depth_weight > 0:
            covered = mask > 0.999  # nerfacc's depth is sum(w t): equal to the surface distance once opacity is 1
            if covered.any():
                depth_error = (depth[covered] - torch.cat(depths).to(self.device)[covered]).abs().mean()
                loss = loss + o.depth_weight * depth_error
                stats["depth_error"] = float(depth_error.detach())
        stats.update(sds=float(loss.detach()), clip=0.0, sds_grad=0.0)
        return loss, stats

    def _all_finite(self, loss: torch.Tensor) -> bool:
        ok = bool(torch.isfinite(loss)) and all(
            bool(torch.isfinite(p.grad).all()) for p in self.model.parameters() if p.grad is not None
        )
        if self.dist.world > 1:  # every rank must take the same decision
            flag = torch.tensor([1.0 if ok else 0.0], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            ok = bool(flag.item() > 0)
        return ok

    # -- the loop -----------------------------------------------------------------------------------------------
    def train(self) -> Path | None:
        cfg = self.cfg
        from tqdm import tqdm

        if self.dist.main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tensorboard"))
        bar = tqdm(total=cfg.optim.steps, initial=self.step, disable=not self.dist.main, desc="train")
        consecutive_bad, last_saved = 0, None
        while self.step < cfg.optim.steps:
            start = time.perf_counter()
            # per-rank, per-step seeds: a resumed run does not replay the same batches
            gen = torch.Generator().manual_seed((cfg.run.seed * 1_000_003 + self.step) * 64 + self.dist.rank)
            alpha = alpha_schedule(self.step, cfg.optim.alpha_start, cfg.optim.alpha_begin, cfg.optim.alpha_end)
            self.optimizer.zero_grad(set_to_none=True)
            total = torch.zeros((), device=self.device)
            for micro in range(cfg.optim.grad_accum):
                sync = micro == cfg.optim.grad_accum - 1 or self.dist.world == 1
                with contextlib.nullcontext() if sync else self.net.no_sync():
                    loss, stats = self.compute_loss(gen, alpha)
                    (loss / cfg.optim.grad_accum).backward()
                total = total + loss.detach() / cfg.optim.grad_accum
            if not self._all_finite(total):
                consecutive_bad += 1
                self.bad_steps_total += 1
                self.optimizer.zero_grad(set_to_none=True)
                log.warning("step %d: non-finite loss or gradients, step skipped (%d in a row)", self.step,
                            consecutive_bad)
                if consecutive_bad >= cfg.optim.max_bad_steps:
                    kept = checkpoint_folders(self.ckpt_dir)
                    raise TrainingStopped(
                        f"{consecutive_bad} steps in a row had a non-finite loss or gradients (step {self.step}); "
                        f"stopping. The last good checkpoint is {kept[0] if kept else 'none (none was written)'}. "
                        "Lower optim.lr or prior.guidance_scale and resume."
                    )
                continue
            consecutive_bad = 0
            self.optimizer.step()
            self.lr_scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            self.step += 1
            bar.update(1)
            self._log(float(total), stats, alpha, time.perf_counter() - start)
            if self.step % cfg.run.checkpoint_every == 0 or self.step == cfg.optim.steps:
                last_saved = self.save()
            if self.dist.main and (self.step % cfg.run.validate_every == 0 or self.step == cfg.optim.steps):
                self.validate()
        bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.dist.world > 1:
            dist.barrier()
        return last_saved

    def _log(self, loss: float, stats: dict, alpha: float, seconds: float) -> None:
        if not self.dist.main or self.step % self.cfg.run.log_every:
            return
        w, s = self.writer, self.step
        w.add_scalar("loss/total", loss, s)
        w.add_scalar("loss/sds", stats["sds"], s)
        w.add_scalar("loss/clip", stats["clip"], s)
        w.add_scalar("sds/grad_norm", stats["sds_grad"], s)
        w.add_scalar("render/opacity", stats["opacity"], s)
        w.add_scalar("alpha", alpha, s)
        w.add_scalar("lr", self.optimizer.param_groups[0]["lr"], s)
        if "depth_error" in stats:
            w.add_scalar("loss/depth_error", stats["depth_error"], s)
        if "normal_error" in stats:
            w.add_scalar("loss/normal_error", stats["normal_error"], s)
        if "plane_roughness" in stats:
            w.add_scalar("loss/plane_roughness", stats["plane_roughness"], s)
        if "opacity_entropy" in stats:
            w.add_scalar("render/opacity_entropy", stats["opacity_entropy"], s)
        if "depth_variance" in stats:
            w.add_scalar("render/depth_variance", stats["depth_variance"], s)
        w.add_scalar("time/step_seconds", seconds, s)
        w.add_scalar("skipped_steps", self.bad_steps_total, s)
        w.add_scalar("views_per_prompt", self.views_per_prompt(), s)
        if "severity" in stats:
            w.add_scalar("perp_neg/severity_mean", float(stats["severity"].mean()), s)
            w.add_histogram("perp_neg/severity", stats["severity"], s)

    @torch.no_grad()
    def validate(self) -> list[Path]:
        """Orbit videos of the validation prompts with the current (EMA) weights."""
        model = (self.ema.module if self.ema is not None else self.model).eval()
        folder = self.out / "validation" / f"step-{self.step:07d}"
        paths = []
        for i, prompt in enumerate(self.cfg.prompts.validation):
            tokens, pooled = self.text_encoder.encode(prompt)
            planes = model(tokens, pooled, seed_noise(0, model.config.generator.z_dim).to(self.device))
            out = Instant3DOutput(prompt, 0, planes, model, [], {}, None)
            paths.append(out.orbit_video(folder / f"{i:02d}.mp4", frames=self.cfg.run.validation_frames,
                                         size=self.cfg.run.validation_size))
            if self.writer is not None:
                front = torch.from_numpy(out.render(0, 15, size=self.cfg.run.validation_size))
                self.writer.add_image(f"validation/{i:02d}", front.permute(2, 0, 1), self.step)
        if paths:
            (folder / "prompts.txt").write_text("\n".join(self.cfg.prompts.validation) + "\n")
        model.train()
        return paths
