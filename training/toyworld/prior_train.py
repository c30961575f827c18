"""Train the toy world's text-to-image diffusion prior: a pixel-space diffusers UNet at 32^2 conditioned on the
small CLIP's (frozen) text tower, saved in Stable Diffusion's folder layout without ``vae/``.

    python -m training.toyworld.prior_train --clip assets/priors/toy-clip --out assets/priors/toy-diffusion \
        [--steps 20000] [--batch 32]
    python -m training.toyworld.prior_train --clip ... --out ... --evaluate-only   # R-precision of its samples

Captions are "<prompt>, <front|side|back|overhead> view" (the view prompts SDS uses), dropped to "" 10 % of the
time for classifier-free guidance. The folder written (``unet/`` = EMA weights, ``scheduler/``,
``text_encoder/``, ``tokenizer/``) loads through ``training.guidance.DiffusionGuidance.from_folder`` exactly as
Stable Diffusion does. Re-running the command resumes; the folder is re-exported atomically every few hundred
steps, so an interrupted run still leaves a usable prior.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from instant3d.files import atomic_folder
from instant3d.text_encoder import TextEncoder, quiet_transformers

from ..clip_model import CLIPScorer
from ..state import load_run_state, save_run_state
from .dataset import cached_set
from .scenes import all_prompts, spread_subset

log = logging.getLogger("instant3d.toyworld.prior")


def build_unet(cross_attention_dim: int, size: int = 32):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=size, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 64, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=16,
    )


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


@torch.no_grad()
def sample(unet, scheduler, text: torch.Tensor, uncond: torch.Tensor, steps: int = 50, cfg: float = 5.0,
           generator=None) -> torch.Tensor:
    """DDIM samples (B, 3, H, W) in [0, 1] for text embeddings (B, L, D)."""
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(steps)
    size = unet.config.sample_size
    x = torch.randn(text.shape[0], 3, size, size, generator=generator)
    emb = torch.cat([text, uncond.expand_as(text)])
    for t in ddim.timesteps:
        eps = unet(torch.cat([x, x]), t, encoder_hidden_states=emb).sample
        cond, unc = eps.chunk(2)
        x = ddim.step(unc + cfg * (cond - unc), t, x).prev_sample
    return ((x + 1) / 2).clamp(0, 1)


def sample_r_precision(folder: Path, clip_folder: Path, prompts: list[str], per_prompt: int = 1, seed: int = 0):
    """Generate one front-view sample per prompt and ask a CLIP to pick its prompt among all: (R-precision, images)."""
    from diffusers import DDIMScheduler, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(folder / "unet", use_safetensors=True).eval()
    scheduler = DDIMScheduler.from_pretrained(folder / "scheduler")
    encoder = TextEncoder.from_folder(folder)
    clip = CLIPScorer.from_folder(clip_folder)
    uncond = _uncond(encoder)
    gen = torch.Generator().manual_seed(seed)
    text_all = clip.text_features(prompts)
    hits, images = 0, []
    for start in range(0, len(prompts), 32):
        chunk = prompts[start : start + 32]
        tokens, _ = encoder.encode([p + ", front view" for p in chunk for _ in range(per_prompt)])
        img = sample(unet, scheduler, tokens, uncond, generator=gen)
        feats = clip.image_features(img)
        pred = (feats @ text_all.T).argmax(-1)
        truth = torch.tensor([start + i for i in range(len(chunk)) for _ in range(per_prompt)])
        hits += int((pred == truth).sum())
        images.append(img)
    return hits / (len(prompts) * per_prompt), torch.cat(images)


def _uncond(encoder: TextEncoder) -> torch.Tensor:
    ids = encoder.tokenizer([""], padding="max_length", max_length=encoder.max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        return encoder.model(input_ids=ids).last_hidden_state.float()


def main(argv=None) -> int:
    from diffusers import DDPMScheduler

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", required=True, help="the small CLIP folder (its text tower conditions the UNet)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", default=None, help="data cache and resume state (default: runs/<out name>)")
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--views", type=int, default=96)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--save-every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-prompts", type=int, default=0, help="train on an even subset (tests, quick trials)")
    parser.add_argument("--eval-clip", default=None, help="CLIP used to score samples (default: --clip)")
    parser.add_argument("--evaluate-only", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out, work, clip_folder = Path(args.out), Path(args.work or f"runs/{Path(args.out).name}"), Path(args.clip)
    prompts = spread_subset(all_prompts(), args.max_prompts)
    if args.evaluate_only:
        acc, _ = sample_r_precision(out, Path(args.eval_clip or clip_folder), prompts)
        print(f"R-precision of {len(prompts)} front-view samples (DDIM 50, CFG 5): {acc:.3f}")
        return 0
    work.mkdir(parents=True, exist_ok=True)
    start = time.time()
    data = cached_set(work / f"train-{args.size}-{args.views}-s{args.seed}-n{len(prompts)}.safetensors", prompts,
                      args.views, args.size, seed=3000 + args.seed)
    log.info("data: %d images (%.0f s)", len(data.images), time.time() - start)
    encoder = TextEncoder.from_folder(clip_folder)
    captions = data.captions(with_view=True)
    unique = sorted(set(captions))
    table = {c: i for i, c in enumerate(unique)}
    caption_ids = torch.tensor([table[c] for c in captions])
    embeddings = torch.cat([encoder.encode(unique[i : i + 256])[0] for i in range(0, len(unique), 256)])
    uncond = _uncond(encoder)[0]
    torch.manual_seed(args.seed)
    unet = build_unet(encoder.token_dim, args.size)
    ema = copy.deepcopy(unet).requires_grad_(False)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    state = load_run_state(work / "state", {"unet": unet, "ema": ema}, optimizer)
    step = state["step"] if state else 0
    if state:
        log.info("resumed at step %d", step)
    elif (out / "progress.json").is_file():
        # A fresh checkout has no run state (runs/ is not committed) but has the committed export: continue from
        # its EMA weights with a fresh optimizer.
        from diffusers import UNet2DConditionModel

        exported = UNet2DConditionModel.from_pretrained(out / "unet", use_safetensors=True)
        unet.load_state_dict(exported.state_dict())
        ema.load_state_dict(exported.state_dict())
        step = json.loads((out / "progress.json").read_text())["step"]
        log.info("continuing from the exported weights in %s at step %d (fresh optimizer)", out, step)
    log.info("UNet: %.2f M parameters, %d captions", sum(p.numel() for p in unet.parameters()) / 1e6, len(unique))
    gen = torch.Generator().manual_seed(args.seed * 7919 + step)
    command = " ".join(["python -m training.toyworld.prior_train", *(argv if argv is not None else sys.argv[1:])])
    abar = scheduler.alphas_cumprod
    timer = time.time()
    while step < args.steps:
        idx = torch.randint(len(data.images), (args.batch,), generator=gen)
        x = data.images[idx].permute(0, 3, 1, 2).float() / 127.5 - 1
        cond = embeddings[caption_ids[idx]]
        drop = torch.rand(args.batch, generator=gen) < 0.1
        cond = torch.where(drop[:, None, None], uncond.expand_as(cond), cond)
        t = torch.randint(0, 1000, (args.batch,), generator=gen)
        noise = torch.randn(x.shape, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        pred = unet(a.sqrt() * x + (1 - a).sqrt() * noise, t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            for e, p in zip(ema.parameters(), unet.parameters()):
                e.lerp_(p, 1 - args.ema)
        step += 1
        if step % 50 == 0:
            log.info("step %d loss %.4f (%.2f s/step)", step, loss.item(), (time.time() - timer) / 50)
            timer = time.time()
        if step % args.save_every == 0 or step == args.steps:
            save_run_state(work / "state", {"unet": unet, "ema": ema}, optimizer, step)
            export_folder(out, ema, scheduler, clip_folder, {
                "progress.json": json.dumps({"step": step, "batch": args.batch}),
                "TRAINING.md": f"Trained by `{command}`; EMA weights at step {step}.\n",
            })
            log.info("step %d: exported %s", step, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
