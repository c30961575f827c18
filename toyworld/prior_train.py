"""Train the toy world's text-to-image diffusion prior: a pixel-space diffusers UNet at 32^2 conditioned on a small
CLIP's (frozen) text tower, saved in Stable Diffusion's folder layout without ``vae/``.

    python -m toyworld.prior_train --clip assets/priors/toy-clip-views --out assets/priors/toy-diffusion \
        [--steps 5000] [--batch 32]

The recipe (docs/toyworld.md, "The diffusion prior", says why each part is there):
- captions "<prompt>, <front|side|back> view" of the *training* prompts only, so that held-out prompts measure
  composition, not memory; dropped to "" 15 % of the time for classifier-free guidance;
- renders flat-albedo or Lambertian-lit on random solid backgrounds (no shape-only "textureless" renders, whose
  colour words do not show); front-facing objects drawn ``--front-weight`` times as often, since only they show
  what a view word means; optionally (``--detail-weight``) the errors on the pixels of the small named parts (nose,
  beak, door, eyes) and of what lies in line with them along z weighted more, since those few pixels are all that
  tells a front view from a back one;
- the token sequence in cross-attention at 16^2 and 8^2, and the attention-pooled text added to the timestep
  embedding (diffusers' ``addition_embed_type="text"``), so that every res-block sees the prompt and the UNet is
  still called exactly as Stable Diffusion's is (attention at 32^2 as well made a step 1.8x slower on 2 cores);
- v-prediction on the cosine noise schedule, min-SNR-5 loss weights, warm-up + cosine learning rate (diffusers'
  ``get_scheduler``), EMA weights (diffusers' ``EMAModel``).

``--camera`` is a separate arm (a toy MVDream), not the paper's path: the camera's azimuth and elevation are also
embedded and added to the timestep embedding; the SDS guidance then passes each render's camera.

The folder written (``unet/`` = EMA weights, ``scheduler/``, ``text_encoder/``, ``tokenizer/``) loads through
``training.guidance.DiffusionGuidance.from_folder`` exactly as Stable Diffusion does. Re-running the command
resumes; the folder is re-exported atomically every ``--save-every`` steps with the diffusion-classifier accuracy
of the moment in ``progress.json``, so an interrupted run still leaves a usable, measured prior.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from instant3d.io.files import atomic_folder, remove_stale_temporaries
from instant3d.models.text_encoder import TextEncoder, quiet_transformers

from training.guidance import camera_features
from training.state import load_run_state, save_run_state
from .dataset import cached_set
from .scenes import prompt_split, scene_for_prompt, spread_subset

log = logging.getLogger("instant3d.toyworld.prior")
PRIOR_SHADING = {"albedo": 0.5, "lambertian": 0.5}


def build_unet(cross_attention_dim: int, size: int = 32, camera: bool = False):
    """The prior's UNet. Below 64^2: 3 levels (32, 64, 128 channels). From 64^2: a 4th level in front (32, 64, 128,
    128), so that the text is still cross-attended at 16^2 and 8^2 and a step costs ~2.7x the 32^2 one, not the
    ~5x of running the 32^2 layout at 64^2 (attention at 32^2). The attention-pooled text is added to the timestep
    embedding, which reaches every res-block. ``camera``: the camera's ``camera_features`` embedded and added there
    too (a separate arm, a toy MVDream)."""
    from diffusers import UNet2DConditionModel

    if size >= 64:  # a 4th level in front
        channels = (32, 64, 128, 128)
        down = ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
        up = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D")
    else:
        channels = (32, 64, 128)
        down = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
        up = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    if size % 2 ** (len(channels) - 1):
        raise ValueError(f"the prior's image size {size} must be divisible by {2 ** (len(channels) - 1)}")
    extra = dict(class_embed_type="projection", projection_class_embeddings_input_dim=4) if camera else {}
    return UNet2DConditionModel(
        sample_size=size, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=channels,
        down_block_types=down, up_block_types=up,
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=16,
        addition_embed_type="text", addition_embed_type_num_heads=4, **extra,
    )


def build_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                         clip_sample=False)


def export_folder(out: Path, unet, scheduler, clip_folder: Path, notes: dict[str, str] | None = None) -> None:
    """Write the Stable Diffusion-style folder (plus ``notes``: file name -> text) atomically."""
    from transformers import AutoTokenizer, CLIPTextModel

    with atomic_folder(out) as tmp, quiet_transformers():
        unet.save_pretrained(tmp / "unet")
        scheduler.save_pretrained(tmp / "scheduler")
        CLIPTextModel.from_pretrained(clip_folder, use_safetensors=True).save_pretrained(tmp / "text_encoder")
        AutoTokenizer.from_pretrained(clip_folder).save_pretrained(tmp / "tokenizer")
        for name, text in (notes or {}).items():
            (tmp / name).write_text(text)


def min_snr_weights(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float, prediction: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023): min(SNR, gamma) / SNR for epsilon targets,
    min(SNR, gamma) / (SNR + 1) for v targets."""
    abar = alphas_cumprod[t]
    snr = abar / (1 - abar)
    clipped = snr.clamp(max=gamma)
    return clipped / (snr + 1) if prediction == "v_prediction" else clipped / snr


def load_adding_camera(unet, exported) -> None:
    """``exported``'s weights into ``unet``. If ``unet`` takes the camera and ``exported`` did not, the camera's
    embedding starts with its last layer at zero, so the continued prior starts as exactly the exported one."""
    missing, unexpected = unet.load_state_dict(exported.state_dict(), strict=False)
    if unexpected or any(not key.startswith("class_embedding.") for key in missing):
        raise RuntimeError(f"cannot continue from the exported UNet: missing {missing}, unexpected {unexpected}")
    if missing:
        torch.nn.init.zeros_(unet.class_embedding.linear_2.weight)
        torch.nn.init.zeros_(unet.class_embedding.linear_2.bias)


def denoising_loss(pred: torch.Tensor, target: torch.Tensor, detail: torch.Tensor | None, detail_weight: float):
    """Per-sample squared error (B,), each pixel weighted 1 + ``detail_weight`` x its detail coverage (B, H, W in
    [0, 1]): the parts are 1-3 pixels of 1 024 at 32^2, so unweighted they barely move the loss."""
    per_pixel = (pred - target).square().mean(dim=1)  # (B, H, W)
    if detail is not None and detail_weight > 0:
        per_pixel = per_pixel * (1 + detail_weight * detail)
    return per_pixel.mean(dim=(1, 2))


def probe_set(prompts: list[str], size: int, count: int, seed: int):
    """A fixed set of ground-truth renders (and front/back renders of front-facing prompts) for tracking the
    diffusion-classifier accuracy during training."""
    from .prior_probe import probe_images, view_probe_images

    chosen = spread_subset(prompts, count)
    fronts = [p for p in prompts if scene_for_prompt(p).front_facing]
    return probe_images(chosen, size, 1, seed=seed), view_probe_images(fronts, size, 1, seed=seed + 1)


def track_accuracy(unet, scheduler, encoder: TextEncoder, probes) -> dict[str, float]:
    """Diffusion-classifier accuracy per attribute on the probe renders, through the SDS guidance code."""
    from training.guidance import DiffusionGuidance
    from .prior_probe import diffusion_classifier

    was_training = unet.training
    # fp32 even on CUDA: guidance would otherwise cast the EMA UNet it is handed to fp16 in place
    guidance = DiffusionGuidance(unet, scheduler, encoder, perp_neg="none", half_precision=False)
    attributes, views = probes
    out = diffusion_classifier(guidance, attributes, ("colour", "shape", "size", "binding"), (150, 400, 650))
    if views:  # a small subset of prompts may hold no front-facing object
        out["view"] = diffusion_classifier(guidance, views, ("view",), (150, 400, 650))["view"]
    unet.train(was_training)
    return {k: round(v, 3) for k, v in out.items() if not k.startswith("n_")}


def training_notes(out: Path, command: str, step: int) -> str:
    """TRAINING.md: the command and step on its first line, rewritten at every export; whatever notes follow the
    first blank line of the previous export (wall times, history) are kept."""
    previous = (out / "TRAINING.md").read_text() if (out / "TRAINING.md").is_file() else ""
    kept = previous.split("\n\n", 1)[1] if previous.startswith("Trained by `") and "\n\n" in previous else ""
    return f"Trained by `{command}`; EMA weights at step {step}.\n" + (f"\n{kept}" if kept else "")


def uncond_embedding(encoder: TextEncoder) -> torch.Tensor:
    """The empty prompt's token sequence (L, D) (``clean_prompt`` refuses "", so it is tokenised here)."""
    ids = encoder.tokenizer([""], padding="max_length", max_length=encoder.max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        return encoder.model(input_ids=ids).last_hidden_state[0].float()


def training_device(name: str) -> torch.device:
    """The torch device named, refused with what to do when this machine lacks it (before minutes of rendering)."""
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise SystemExit(f"--device {name!r} is not a torch device name ({error}); use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: this torch build or machine has no CUDA device; install the CUDA build of "
                         f"torch {torch.__version__.split('+')[0]} or train with --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise SystemExit(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered "
                         f"from 0")
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"--device {name}: only cpu and cuda are supported")
    return device


def training_prompts(which: str, max_prompts: int) -> list[str]:
    train, held_out = prompt_split()
    prompts = {"train": train, "all": train + held_out}[which]
    return spread_subset(sorted(prompts), max_prompts)


def main(argv=None) -> int:
    from diffusers import UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", required=True, help="the small CLIP folder (its text tower conditions the UNet)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", default=None, help="data cache and resume state (default: runs/<out name>)")
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--rewarmup", type=int, default=200,
                        help="steps of learning-rate ramp when continuing from an export with a fresh optimizer")
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--min-snr", type=float, default=5.0, help="min-SNR-gamma loss weighting (0: off)")
    parser.add_argument("--drop", type=float, default=0.15, help="share of empty captions (for guidance)")
    parser.add_argument("--front-weight", type=float, default=4.0,
                        help="how much more often renders of front-facing objects are drawn")
    parser.add_argument("--detail-weight", type=float, default=0.0,
                        help="extra loss weight on the pixels of small named parts (0: every pixel alike)")
    parser.add_argument("--camera", action="store_true",
                        help="also condition on the camera (azimuth, elevation): a separate arm, not the paper's "
                             "view words alone; continuing from a prior without it starts the camera's embedding at "
                             "zero")
    parser.add_argument("--prompts", choices=["train", "all"], default="train",
                        help="train: the training split only (held-out prompts then measure composition)")
    parser.add_argument("--views", type=int, default=96)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--save-every", type=int, default=500)
    parser.add_argument("--probe", type=int, default=60, help="prompts in the tracked diffusion-classifier probe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-prompts", type=int, default=0, help="train on an even subset (tests, quick trials)")
    parser.add_argument("--device", default="cpu",
                        help="where the UNet trains, e.g. cuda (bf16 autocast there); the data and the random draws "
                             "stay on the CPU, so a run resumes on either with the same draws")
    args = parser.parse_args(argv)
    device = training_device(args.device)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out, work, clip_folder = Path(args.out), Path(args.work or f"runs/{Path(args.out).name}"), Path(args.clip)
    prompts = training_prompts(args.prompts, args.max_prompts)
    work.mkdir(parents=True, exist_ok=True)
    for path in [*remove_stale_temporaries(work), *remove_stale_temporaries(out.parent, out.name)]:
        log.info("removed %s, left by an interrupted save", path)
    start = time.time()
    data = cached_set(work / f"train-{args.size}-{args.views}-s{args.seed}-{args.prompts}{len(prompts)}.safetensors",
                      prompts, args.views, args.size, seed=3000 + args.seed, shading=PRIOR_SHADING,
                      need_detail=args.detail_weight > 0)
    probes = probe_set(prompts, args.size, args.probe, seed=4000 + args.seed) if args.probe else None
    log.info("data: %d images (%.0f s)", len(data.images), time.time() - start)
    encoder = TextEncoder.from_folder(clip_folder)
    captions = data.captions(with_view=True)
    unique = sorted(set(captions))
    table = {c: i for i, c in enumerate(unique)}
    caption_ids = torch.tensor([table[c] for c in captions])
    embeddings = torch.cat([encoder.encode(unique[i : i + 256])[0] for i in range(0, len(unique), 256)]).to(device)
    uncond = uncond_embedding(encoder).to(device)
    front = torch.tensor([scene_for_prompt(p).front_facing for p in prompts])[data.prompt_index]
    draw_weights = torch.where(front, args.front_weight, 1.0)

    torch.manual_seed(args.seed)
    unet = build_unet(encoder.token_dim, args.size, args.camera).to(device)
    ema_unet = build_unet(encoder.token_dim, args.size, args.camera).to(device).requires_grad_(False)
    cameras = camera_features(data.azimuth, data.elevation).to(device) if args.camera else None
    scheduler = build_scheduler()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    state = load_run_state(work / "state", {"unet": unet, "ema": ema_unet}, optimizer)
    step = state["step"] if state else 0
    history = state.get("history", []) if state else []
    fresh_optimizer_from = None
    if state:
        log.info("resumed at step %d", step)
    elif (out / "progress.json").is_file():
        # A fresh checkout has no run state (runs/ is not committed) but has the committed export: continue from
        # its EMA weights with a fresh optimizer, if it is this recipe's UNet.
        exported = UNet2DConditionModel.from_pretrained(out / "unet", use_safetensors=True)
        if exported.config.addition_embed_type == unet.config.addition_embed_type:
            load_adding_camera(unet, exported)
            progress = json.loads((out / "progress.json").read_text())
            step, history = progress["step"], progress.get("history", [])
            fresh_optimizer_from = step
            log.info("continuing from the exported weights in %s at step %d (fresh optimizer)", out, step)
    if not state:
        ema_unet.load_state_dict(unet.state_dict())
    ema = EMAModel(ema_unet.parameters(), decay=args.ema)
    ema.optimization_step = step
    for group in optimizer.param_groups:
        group["initial_lr"] = args.lr
    lr_schedule = get_scheduler("cosine", optimizer, num_warmup_steps=args.warmup, num_training_steps=args.steps,
                                last_epoch=step - 1)

    def ramp_fresh_optimizer() -> None:
        # A fresh Adam's first updates are ~lr in every weight whatever the gradient's size; ramping the rate
        # keeps them from knocking trained weights about.
        if fresh_optimizer_from is not None and args.rewarmup > 0:
            factor = min(1.0, (step - fresh_optimizer_from + 1) / args.rewarmup)
            for group, base in zip(optimizer.param_groups, lr_schedule.get_last_lr()):
                group["lr"] = base * factor

    ramp_fresh_optimizer()
    log.info("UNet: %.2f M parameters, %d captions of %d prompts", sum(p.numel() for p in unet.parameters()) / 1e6,
             len(unique), len(prompts))
    gen = torch.Generator().manual_seed(args.seed * 7919 + step)
    command = " ".join(["python -m toyworld.prior_train", *(argv if argv is not None else sys.argv[1:])])
    timer, losses = time.time(), []
    unet.train()
    while step < args.steps:
        idx = torch.multinomial(draw_weights, args.batch, replacement=True, generator=gen)  # draws on the CPU
        x = (data.images[idx].permute(0, 3, 1, 2).float() / 127.5 - 1).to(device)
        drop = torch.rand(args.batch, generator=gen) < args.drop
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch,), generator=gen)
        noise = torch.randn(x.shape, generator=gen).to(device)
        idx_d, drop_d, t_d = idx.to(device), drop.to(device), t.to(device)
        cond = embeddings[caption_ids[idx].to(device)]
        cond = torch.where(drop_d[:, None, None], uncond.expand_as(cond), cond)
        extra = {"class_labels": cameras[idx_d]} if cameras is not None else {}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            pred = unet(scheduler.add_noise(x, noise, t_d), t_d, encoder_hidden_states=cond, **extra).sample.float()
        target = scheduler.get_velocity(x, noise, t_d) if scheduler.config.prediction_type == "v_prediction" else noise
        detail = (data.detail[idx].float() / 255).to(device) if args.detail_weight > 0 else None
        per_sample = denoising_loss(pred, target, detail, args.detail_weight)
        if args.min_snr > 0:
            per_sample = per_sample * min_snr_weights(scheduler.alphas_cumprod, t, args.min_snr,
                                                      scheduler.config.prediction_type).to(device)
        loss = per_sample.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        ema.step(unet.parameters())
        step += 1
        ramp_fresh_optimizer()
        losses.append(loss.item())
        if step % 50 == 0:
            log.info("step %d loss %.4f lr %.2e (%.2f s/step)", step, sum(losses) / len(losses),
                     optimizer.param_groups[0]["lr"], (time.time() - timer) / 50)
            timer, losses = time.time(), []
        if step % args.save_every == 0 or step == args.steps:
            ema.copy_to(ema_unet.parameters())
            record = {"step": step}
            if probes:
                record["diffusion_classifier"] = track_accuracy(ema_unet, scheduler, encoder, probes)
                log.info("step %d: diffusion-classifier accuracy (EMA) %s", step, record["diffusion_classifier"])
            history.append(record)
            save_run_state(work / "state", {"unet": unet, "ema": ema_unet}, optimizer, step, {"history": history})
            export_folder(out, ema_unet, scheduler, clip_folder, {
                "progress.json": json.dumps({"step": step, "batch": args.batch, "history": history}, indent=1),
                "TRAINING.md": training_notes(out, command, step),
            })
            log.info("step %d: exported %s", step, out)
            timer = time.time()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
