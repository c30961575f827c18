"""Score Distillation Sampling against a diffusers text-to-image model loaded from a local folder.

The folder has Stable Diffusion's layout: ``unet/``, ``scheduler/``, ``text_encoder/``, ``tokenizer/`` and,
for latent models such as SD 2.1, ``vae/``. Without ``vae/`` (our toy-world prior) SDS runs in pixel space.

SDS (paper Eq. 2-4): x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps; eps_hat from classifier-free guidance or
(adaptive) Perp-Neg; grad = w(t) (eps_hat - eps) with w(t) = 1 - abar_t, injected at x with the UNet's
Jacobian skipped (the loss 0.5 ||x - sg(x - grad)||^2 has exactly that gradient).

The score estimator is a choice (``estimator``); each replaces what eps_hat is compared with:
- "sds": eps_hat - eps (the paper);
- "csd", classifier-score distillation (Yu et al. 2023): eps_hat - eps_uncond, the guidance term alone;
- "nfsd", noise-free score distillation (Katzir et al. 2023): eps_hat - eps_uncond + delta_D, where delta_D is
  eps_uncond below t = 200 and eps_uncond - eps_negative above (eps_negative: a negative prompt's prediction;
  with no negative prompt, delta_D is 0 there);
- "asd", asynchronous score distillation (ScaleDreamer, Ma et al. 2024): eps_hat(x_t, t) - eps_cond(x_t', t')
  with the same noise at a later t' = t + 0.1 (t - t_min) u, u ~ U(0, 1): one extra UNet call.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from instant3d.models.text_encoder import TextEncoder, quiet_transformers

from .perpneg import VIEW_SUFFIXES, perp_neg_guidance, view_blend

VIEWS = ("front", "side", "back", "overhead")
ESTIMATORS = ("sds", "csd", "nfsd", "asd")
NFSD_SMALL_T = 200  # NFSD: below this timestep the unconditional prediction alone is taken as the noise


class PriorError(ValueError):
    """A diffusion-model folder that cannot be used; the message names the missing piece."""


def camera_features(azimuth, elevation) -> torch.Tensor:
    """(B, 4) = sin / cos of azimuth and elevation (degrees): the camera input of a camera-conditioned prior (a toy
    MVDream: diffusers' ``class_embed_type="projection"`` embeds it and adds it to the timestep embedding)."""
    az = torch.deg2rad(torch.as_tensor(azimuth, dtype=torch.float32).reshape(-1))
    el = torch.deg2rad(torch.as_tensor(elevation, dtype=torch.float32).reshape(-1))
    return torch.stack([az.sin(), az.cos(), el.sin(), el.cos()], dim=-1)


@dataclass
class SDSOutput:
    loss: torch.Tensor  # its gradient w.r.t. the images is the SDS gradient
    timesteps: torch.Tensor
    grad_norm: float


class DiffusionGuidance:
    """A frozen diffusion model that scores renders of an object against a prompt (SDS)."""

    def __init__(self, unet, scheduler, text_encoder: TextEncoder, vae=None, guidance_scale: float = 100.0,
                 t_range=(0.02, 0.98), perp_neg: str = "adaptive", half_precision: bool = True,
                 estimator: str = "sds", negative_prompt: str = ""):
        if perp_neg not in ("none", "fixed", "adaptive"):
            raise PriorError(f"perp_neg must be 'none', 'fixed' or 'adaptive', got {perp_neg!r}")
        if estimator not in ESTIMATORS:
            raise PriorError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
        self.estimator, self.negative_prompt = estimator, negative_prompt
        if not 0 <= t_range[0] < t_range[1] <= 1:
            raise PriorError(f"t_range must satisfy 0 <= t_min < t_max <= 1, got {t_range}")
        self.device = next(unet.parameters()).device
        self.dtype = torch.float16 if half_precision and self.device.type == "cuda" else torch.float32
        self.unet = (unet.to(self.dtype) if self.dtype != torch.float32 else unet).eval().requires_grad_(False)
        self.vae = vae.eval().requires_grad_(False) if vae is not None else None  # fp32: SD's VAE overflows in fp16
        self.text_encoder = text_encoder
        self.scheduler = scheduler
        self.alphas_cumprod = scheduler.alphas_cumprod.to(self.device, torch.float32)
        n = scheduler.config.num_train_timesteps
        self.t_min, self.t_max = int(t_range[0] * n), int(t_range[1] * n)
        self.guidance_scale = guidance_scale
        self.perp_neg = perp_neg
        self.prediction_type = scheduler.config.get("prediction_type", "epsilon")
        self._uncond: torch.Tensor | None = None

    @classmethod
    def from_folder(cls, folder, device="cpu", **options) -> "DiffusionGuidance":
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

        folder = Path(folder)
        if not folder.is_dir():
            raise PriorError(f"diffusion model folder {folder} does not exist")
        for part in ("unet", "scheduler", "text_encoder", "tokenizer"):
            if not (folder / part).is_dir():
                raise PriorError(f"{folder} is not a Stable Diffusion-style folder: {part}/ is missing")
        if not list((folder / "unet").glob("*.safetensors")):
            raise PriorError(f"no safetensors weights in {folder / 'unet'} (pickled weights are never loaded)")
        with quiet_transformers():
            unet = UNet2DConditionModel.from_pretrained(folder / "unet", use_safetensors=True).to(device)
            scheduler = DDIMScheduler.from_pretrained(folder / "scheduler")
            vae = None
            if (folder / "vae").is_dir():
                vae = AutoencoderKL.from_pretrained(folder / "vae", use_safetensors=True).to(device)
        text_encoder = TextEncoder.from_folder(folder, device)
        if text_encoder.token_dim != unet.config.cross_attention_dim:
            raise PriorError(f"the text encoder's width {text_encoder.token_dim} does not match the UNet's "
                             f"cross_attention_dim {unet.config.cross_attention_dim}")
        return cls(unet, scheduler, text_encoder, vae, **options)

    # -- inputs -------------------------------------------------------------------------------------------------
    @property
    def input_size(self) -> int:
        """The image size the model works at (pixels for pixel models, VAE input size for latent ones)."""
        size = self.unet.config.sample_size
        if self.vae is not None:
            size *= 2 ** (len(self.vae.config.block_out_channels) - 1)
        return int(size)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """sRGB images (B, 3, H, W) in [0, 1] -> the model's input space (latents, or pixels in [-1, 1])."""
        size = self.input_size
        if images.shape[-1] != size:
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                                   antialias=images.shape[-1] > size)
        x = images * 2 - 1
        if self.vae is None:
            return x
        latents = self.vae.encode(x.float()).latent_dist.sample()
        return latents * self.vae.config.scaling_factor

    def view_embeddings(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 4, L, D) embeddings of each prompt + ", front/side/back/overhead view", and the empty prompt's (L, D)."""
        texts = [p + VIEW_SUFFIXES[v] for p in prompts for v in VIEWS]
        tokens, _ = self.text_encoder.encode(texts)
        if self._uncond is None:  # the empty prompt (clean_prompt refuses it, so it is encoded here, once)
            ids = self.text_encoder.tokenizer([""], padding="max_length", max_length=self.text_encoder.max_length,
                                              return_tensors="pt").input_ids.to(self.device)
            with torch.no_grad():
                self._uncond = self.text_encoder.model(input_ids=ids).last_hidden_state[0].float()
        return tokens.view(len(prompts), 4, *tokens.shape[1:]), self._uncond

    @property
    def camera_conditioned(self) -> bool:
        """Does the UNet also take the camera (``camera_features``)? Stable Diffusion's does not."""
        return getattr(self.unet.config, "class_embed_type", None) == "projection"

    # -- SDS ----------------------------------------------------------------------------------------------------
    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, embeddings: torch.Tensor,
                      cameras: torch.Tensor | None = None) -> torch.Tensor:
        """One batched UNet call; v-prediction models are converted to epsilon. ``cameras`` (B, 2): azimuth and
        elevation in degrees, needed by a camera-conditioned prior and ignored by any other."""
        extra = {}
        if self.camera_conditioned:
            if cameras is None:
                raise PriorError("this prior is camera-conditioned: pass the cameras (azimuth, elevation) of the "
                                 "images to predict_noise")
            extra["class_labels"] = camera_features(cameras[:, 0], cameras[:, 1]).to(self.device, self.dtype)
        with torch.no_grad():
            out = self.unet(x_t.to(self.dtype), t, encoder_hidden_states=embeddings.to(self.device, self.dtype),
                            **extra).sample.float()
        if self.prediction_type == "v_prediction":
            a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
            out = a.sqrt() * out + (1 - a).sqrt() * x_t.float()
        return out

    def sds(self, images, prompts, azimuth, elevation, negative_scale=None, generator=None, noise=None,
            timesteps=None, t_max: float | None = None, later_fraction=None) -> SDSOutput:
        """SDS loss for sRGB renders (B, 3, H, W) of ``prompts`` seen from (azimuth, elevation) (degrees).

        ``negative_scale`` (B,) multiplies the Perp-Neg weights (adaptive Perp-Neg: w_min + C dw).
        ``t_max`` (a fraction, as ``t_range``) lowers the largest timestep drawn (timestep annealing).
        ``noise``/``timesteps`` (and ASD's ``later_fraction`` u, (B,)) may be given (tests); otherwise they are
        drawn from ``generator``.
        """
        b = images.shape[0]
        x = self.encode_images(images)
        if timesteps is None:
            n = self.scheduler.config.num_train_timesteps
            high = self.t_max if t_max is None else max(self.t_min, min(self.t_max, int(t_max * n)))
            timesteps = torch.randint(self.t_min, high + 1, (b,), generator=generator)
        t = timesteps.to(self.device)
        if noise is None:
            noise = torch.randn(x.shape, generator=generator)
        noise = noise.to(self.device, x.dtype)
        abar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = abar.sqrt() * x.detach() + (1 - abar).sqrt() * noise

        views, uncond = self.view_embeddings(list(prompts))
        cameras = torch.stack([torch.as_tensor(azimuth, dtype=torch.float32).reshape(-1).expand(b),
                               torch.as_tensor(elevation, dtype=torch.float32).reshape(-1).expand(b)], dim=-1)
        blend = view_blend(azimuth, elevation)
        positive = torch.einsum("bv,bvld->bld", blend.positive.to(views), views)
        uncond = uncond.expand_as(positive)
        if self.perp_neg == "none":
            eps = self.predict_noise(torch.cat([x_t] * 2), torch.cat([t] * 2), torch.cat([positive, uncond]),
                                     cameras.repeat(2, 1))
            eps_pos, eps_u = eps.chunk(2)
            eps_hat = eps_u + self.guidance_scale * (eps_pos - eps_u)
        else:
            negatives = torch.einsum("bkv,bvld->bkld", blend.negatives.to(views), views)
            emb = torch.cat([positive, uncond, negatives[:, 0], negatives[:, 1]])
            eps = self.predict_noise(torch.cat([x_t] * 4), torch.cat([t] * 4), emb, cameras.repeat(4, 1))
            eps_pos, eps_u, eps_n0, eps_n1 = eps.chunk(4)
            weights = blend.negative_weights.to(self.device)
            if self.perp_neg == "adaptive" and negative_scale is not None:
                weights = weights * torch.as_tensor(negative_scale, dtype=torch.float32, device=self.device)[:, None]
            eps_hat = perp_neg_guidance(eps_u, eps_pos, torch.stack([eps_n0, eps_n1], dim=1), weights,
                                        self.guidance_scale)
        baseline = self._estimator_baseline(x, x_t, noise, t, eps_u, positive, generator, later_fraction, cameras)
        grad = (1 - abar) * (eps_hat - baseline)  # a non-finite UNet output must reach the trainer's bad-step guard
        target = (x - grad).detach()
        loss = 0.5 * F.mse_loss(x.float(), target.float(), reduction="sum") / b
        return SDSOutput(loss, timesteps, float(grad.norm() / b))

    def _estimator_baseline(self, x, x_t, noise, t, eps_u, positive, generator, later_fraction,
                            cameras) -> torch.Tensor:
        """What the guided prediction eps_hat is compared with, per estimator (module docstring)."""
        if self.estimator == "sds":
            return noise
        if self.estimator == "csd":
            return eps_u
        if self.estimator == "nfsd":
            small = (t < NFSD_SMALL_T).view(-1, 1, 1, 1)
            if not self.negative_prompt:  # delta_D = eps_u below t = 200, else 0: eps_hat - eps_u + delta_D
                return torch.where(small, torch.zeros_like(eps_u), eps_u)
            tokens, _ = self.text_encoder.encode([self.negative_prompt] * x.shape[0])
            eps_neg = self.predict_noise(x_t, t, tokens.float(), cameras)
            return torch.where(small, torch.zeros_like(eps_u), eps_neg)
        # asd: the conditional prediction at a later timestep, with the same noise
        u = torch.rand(t.shape[0], generator=generator) if later_fraction is None else torch.as_tensor(later_fraction)
        later = (t + (0.1 * (t - self.t_min).float() * u.to(t.device)).long()).clamp(max=self.t_max)
        abar = self.alphas_cumprod[later].view(-1, 1, 1, 1)
        x_later = abar.sqrt() * x.detach() + (1 - abar).sqrt() * noise
        return self.predict_noise(x_later, later, positive, cameras)
