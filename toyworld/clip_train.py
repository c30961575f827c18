"""Train a small CLIP (text + image towers, its own BPE tokenizer) on renders of the toy world.

    python -m toyworld.clip_train --out assets/priors/toy-clip [--steps 3000] [--seed 0]
    python -m toyworld.clip_train --out assets/priors/eval-clip --seed 7 --hidden 96 --layers 3
        (the evaluation CLIP: another seed and size)
    python -m toyworld.clip_train --init assets/priors/toy-clip --out assets/priors/toy-clip-views \
        --hard-negatives 0.25 --steps 600 --lr 1e-4   (the diffusion prior's text tower: view words separated)

The result is a standard transformers ``CLIPModel`` folder with a ``CLIPTokenizer``: the generator's text encoder
(its text tower: 32 tokens x 128 dims, the ``small`` preset's shape), the CLIP loss and adaptive Perp-Neg's image
features. Captions are the prompts, half the time with ", front/side/back/overhead view" (SDS asks the text tower
about those). Re-running the command resumes from ``--work``/state.

Batches hold distinct prompts, so a plain run never puts "a snowman, front view" against "a snowman, back view":
nothing asks the towers to tell view words apart, and toy-clip's text tower maps the two captions to sequences of
cosine 0.994. ``--hard-negatives F`` fills a share F of each batch with pairs that differ in one thing only: a
front-facing object seen from the front and from the back (captioned with their views), and a stack with its
colours swapped ("a red cube on top of a blue sphere" / "a blue cube on top of a red sphere").
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from instant3d.io.files import atomic_folder, remove_stale_temporaries
from instant3d.models.text_encoder import quiet_transformers

from training.clip_model import CLIP_MEAN, CLIP_STD
from training.perpneg import VIEW_SUFFIXES
from training.state import load_run_state, save_run_state
from .dataset import cached_set, view_label
from .scenes import all_prompts, spread_subset

log = logging.getLogger("instant3d.toyworld.clip")
SPLIT_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def train_tokenizer(corpus: list[str], max_length: int = 32, vocab_size: int = 1000):
    """A byte-level BPE trained on the corpus with CLIP's normaliser and pre-tokeniser, as a ``CLIPTokenizer``."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>", continuing_subword_prefix="", unk_token="<|endoftext|>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, end_of_word_suffix="</w>",
                                  special_tokens=["<|startoftext|>", "<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return CLIPTokenizer(vocab=model["vocab"], merges=merges, model_max_length=max_length)


def build_clip(tokenizer, hidden: int, layers: int, image_size: int, patch: int, max_length: int, seed: int):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    heads = max(1, hidden // 32)
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
                num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=max_length,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                  num_attention_heads=heads, image_size=image_size, patch_size=patch)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=hidden))


def pixel_values(images_uint8: torch.Tensor) -> torch.Tensor:
    x = images_uint8.permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def retrieval_accuracy(model, tokenizer, data, prompts: list[str], max_length: int, limit: int = 2000) -> float:
    """Share of (non-textureless) images whose best-scoring prompt among all prompts is the true one."""
    model.eval()
    with torch.no_grad():
        ids = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                        return_tensors="pt").input_ids
        text = F.normalize(_features(model.get_text_features(input_ids=ids)), dim=-1)
        keep = (~data.textureless).nonzero().squeeze(-1)[:limit]
        hits = 0
        for start in range(0, len(keep), 256):
            idx = keep[start : start + 256]
            img = F.normalize(_features(model.get_image_features(pixel_values=pixel_values(data.images[idx]))), dim=-1)
            hits += int(((img @ text.T).argmax(-1) == data.prompt_index[idx]).sum())
    model.train()
    return hits / max(1, len(keep))


class HardPairs:
    """Pairs of (image index, caption) that differ in one thing: view (a front-facing object from the front and
    from the back, captioned with their views) or binding (a stack, and the same stack with its two colours
    swapped, each with an image of its own). The index over the rendered set is built once."""

    def __init__(self, data, prompts: list[str]):
        from .prior_probe import prompt_fields

        self.prompts = prompts
        index = {p: k for k, p in enumerate(prompts)}
        self.by_view: dict[tuple[int, str], list[int]] = {}
        self.by_prompt: dict[int, list[int]] = {}
        for i, (k, a, e, flat) in enumerate(zip(data.prompt_index.tolist(), data.azimuth.tolist(),
                                               data.elevation.tolist(), data.textureless.tolist())):
            if not flat:  # shape-only renders show neither colours nor, reliably, a face
                self.by_view.setdefault((k, view_label(a, e)), []).append(i)
                self.by_prompt.setdefault(k, []).append(i)
        self.fronts = [k for k, p in enumerate(prompts) if prompt_fields(p)[0] == "front"
                       and (k, "front") in self.by_view and (k, "back") in self.by_view]
        self.swaps = []
        for k, p in enumerate(prompts):
            kind, f = prompt_fields(p)
            if kind == "stack":
                q = f"a {f['base_colour']} {f['top_shape']} on top of a {f['top_colour']} {f['base_shape']}"
                if q in index and k in self.by_prompt and index[q] in self.by_prompt:
                    self.swaps.append((k, index[q]))

    @staticmethod
    def _one(pool: list[int], gen: torch.Generator) -> int:
        return pool[int(torch.randint(len(pool), (1,), generator=gen))]

    def draw(self, count: int, gen: torch.Generator) -> list[tuple[int, str]]:
        """``count`` pairs (2 * count items), alternately view pairs and binding pairs when both exist."""
        out: list[tuple[int, str]] = []
        for n in range(count):
            if self.fronts and (n % 2 == 0 or not self.swaps):
                k = self._one(self.fronts, gen)
                out += [(self._one(self.by_view[(k, v)], gen), f"{self.prompts[k]}, {v} view") for v in ("front", "back")]
            elif self.swaps:
                a, b = self.swaps[int(torch.randint(len(self.swaps), (1,), generator=gen))]
                out += [(self._one(self.by_prompt[a], gen), self.prompts[a]),
                        (self._one(self.by_prompt[b], gen), self.prompts[b])]
        return out


def _features(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def main(argv=None) -> int:
    from diffusers.optimization import get_scheduler

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="where the CLIPModel folder is written")
    parser.add_argument("--work", default=None, help="data cache and resume state (default: runs/<out name>)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--views", type=int, default=48, help="rendered views per prompt")
    parser.add_argument("--test-views", type=int, default=4, help="held-out renders per prompt for the accuracy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-prompts", type=int, default=0, help="train on an even subset (tests, quick trials)")
    parser.add_argument("--save-every", type=int, default=250)
    parser.add_argument("--init", default=None,
                        help="fine-tune this CLIP folder (its tokenizer and sizes) instead of starting from scratch")
    parser.add_argument("--hard-negatives", type=float, default=0.0,
                        help="share of each batch given to pairs that differ only in view or in colour binding")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out, work = Path(args.out), Path(args.work or f"runs/{Path(args.out).name}")
    work.mkdir(parents=True, exist_ok=True)
    for path in [*remove_stale_temporaries(work), *remove_stale_temporaries(out.parent, out.name)]:
        log.info("removed %s, left by an interrupted save", path)
    prompts = spread_subset(all_prompts(), args.max_prompts)  # priors know the whole world, as a real CLIP would
    start = time.time()
    tag = f"s{args.seed}-n{len(prompts)}"
    data = cached_set(work / f"train-{args.image_size}-{args.views}-{tag}.safetensors", prompts, args.views,
                      args.image_size, seed=1000 + args.seed)
    test = cached_set(work / f"test-{args.image_size}-{args.test_views}-{tag}.safetensors", prompts,
                      args.test_views, args.image_size,
                      seed=2000 + args.seed)
    log.info("data: %d training images, %d test images (%.0f s)", len(data.images), len(test.images),
             time.time() - start)
    if args.init:
        from transformers import AutoTokenizer, CLIPModel

        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(args.init)
            model = CLIPModel.from_pretrained(args.init, use_safetensors=True)
        if model.config.vision_config.image_size != args.image_size:
            raise SystemExit(f"--init {args.init} reads {model.config.vision_config.image_size}^2 images; "
                             f"pass --image-size {model.config.vision_config.image_size}")
    else:
        corpus = [p + suffix for p in prompts for suffix in ["", *VIEW_SUFFIXES.values()]]
        tokenizer = train_tokenizer(corpus, args.max_length)
        model = build_clip(tokenizer, args.hidden, args.layers, args.image_size, args.patch, args.max_length,
                           args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    state = load_run_state(work / "state", {"model": model}, optimizer)
    step = state["step"] if state else 0
    if state:
        log.info("resumed at step %d", step)
    gen = torch.Generator().manual_seed(args.seed * 7919 + step)
    n_prompts = len(prompts)
    by_prompt = [torch.nonzero(data.prompt_index == k).squeeze(-1) for k in range(n_prompts)]
    for group in optimizer.param_groups:
        group["initial_lr"] = args.lr
    schedule = get_scheduler("cosine", optimizer, num_warmup_steps=200, num_training_steps=args.steps,
                             last_epoch=step - 1)
    hard = HardPairs(data, prompts) if args.hard_negatives > 0 else None
    model.train()
    while step < args.steps:
        pairs = hard.draw(int(args.hard_negatives * args.batch) // 2, gen) if hard else []
        taken = {int(data.prompt_index[i]) for i, _ in pairs}
        chosen = [k for k in torch.randperm(n_prompts, generator=gen).tolist() if k not in taken]
        chosen = chosen[: args.batch - len(pairs)]  # distinct prompts: clean negatives
        idx = [int(by_prompt[k][torch.randint(len(by_prompt[k]), (1,), generator=gen)][0]) for k in chosen]
        with_view = torch.rand(len(idx), generator=gen) < 0.5
        captions = [prompts[int(data.prompt_index[i])] + (
            f", {view_label(float(data.azimuth[i]), float(data.elevation[i]))} view" if v else "")
            for i, v in zip(idx, with_view)] + [c for _, c in pairs]
        idx = torch.tensor(idx + [i for i, _ in pairs])
        ids = tokenizer(captions, padding="max_length", max_length=args.max_length, truncation=True,
                        return_tensors="pt").input_ids
        text = F.normalize(_features(model.get_text_features(input_ids=ids)), dim=-1)
        image = F.normalize(_features(model.get_image_features(pixel_values=pixel_values(data.images[idx]))), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * image @ text.T
        target = torch.arange(len(idx))
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        step += 1
        if step % 50 == 0:
            log.info("step %d loss %.4f lr %.2e scale %.1f", step, loss.item(), schedule.get_last_lr()[0], model.logit_scale.exp().item())
        if step % args.save_every == 0 or step == args.steps:
            save_run_state(work / "state", {"model": model}, optimizer, step)
            acc = retrieval_accuracy(model, tokenizer, test, prompts, args.max_length)
            log.info("step %d: top-1 retrieval among %d prompts on held-out renders: %.3f", step, n_prompts, acc)
    acc = retrieval_accuracy(model, tokenizer, test, prompts, args.max_length, limit=10_000)
    command = " ".join(["python -m toyworld.clip_train", *(argv if argv is not None else sys.argv[1:])])
    with quiet_transformers(), atomic_folder(out) as tmp:  # a crash never leaves a half-written export
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "TRAINING.md").write_text(
            f"Trained by `{command}` ({args.views} renders per prompt at {args.image_size}^2, batch {args.batch}).\n"
            f"Top-1 retrieval among all {n_prompts} prompts on held-out renders (textureless excluded): {acc:.3f}\n")
    log.info("wrote %s; held-out top-1 retrieval %.3f", out, acc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
