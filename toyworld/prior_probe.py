"""Cheap probes of a text-to-image prior: what its text tower separates, and what its denoiser can tell apart.

- ``token_separation``: cosine between a text tower's token sequences for two captions (whole sequence, and at the
  tokens where they differ). If "..., front view" and "..., back view" were the same sequence, no UNet could
  draw them differently.
- ``diffusion_classifier``: a diffusion model is also a classifier (Li et al. 2023, arXiv 2303.16203). For a
  ground-truth render, the caption whose conditioning gives the lowest denoising error over a few fixed noise
  levels (the same noise for every caption) is the model's guess. Candidates differ from the truth in one
  attribute (colour, shape, size, which part has which colour, view), so the accuracy per attribute says which
  words the prior listens to. It bounds the text signal score distillation can extract, and it costs seconds, so
  the trainer tracks it.

    python -m toyworld.prior_probe assets/priors/toy-clip assets/priors/toy-clip-views
        (prints the token separation of SEPARATION_PAIRS for each text tower)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from instant3d.render.cameras import orbit_cameras
from instant3d.render.color import linear_to_srgb

from .dataset import view_label
from .render import render_scene
from .scenes import COLOURS, FRONT_OBJECTS, SHAPES, all_prompts, scene_for_prompt

VIEW_WORDS = ("front", "side", "back")
SEPARATION_PAIRS = (
    ("a white snowman with a carrot nose, front view", "a white snowman with a carrot nose, back view"),
    ("a yellow duck with an orange beak, front view", "a yellow duck with an orange beak, side view"),
    ("a red cube, front view", "a red cube, back view"),
    ("a red cube on top of a blue sphere", "a blue cube on top of a red sphere"),
    ("a red cube", "a blue cube"),
    ("a red cube", "a red sphere"),
)
ATTRIBUTES = ("colour", "shape", "size", "binding", "view")

_C, _S, _O = "|".join(COLOURS), "|".join(SHAPES), "|".join(FRONT_OBJECTS)
_PATTERNS = {
    "single": re.compile(rf"^a (?:(?P<size>small|large) )?(?P<colour>{_C}) (?P<shape>{_S})$"),
    "stack": re.compile(rf"^a (?P<top_colour>{_C}) (?P<top_shape>{_S}) on top of a (?P<base_colour>{_C}) "
                        rf"(?P<base_shape>{_S})$"),
    "front": re.compile(rf"^a (?P<colour>{_C}) (?P<shape>{_O}) with an? (?:carrot nose|orange beak|door)$"),
}
# which parsed fields make up each attribute (size: the empty string is the medium size)
_FIELDS = {"colour": ("colour", "top_colour", "base_colour"), "shape": ("shape", "top_shape", "base_shape"),
           "size": ("size",)}


def prompt_fields(prompt: str) -> tuple[str, dict[str, str]]:
    """(kind, fields) of a toy-world prompt, e.g. ("stack", {"top_colour": "red", ...})."""
    for kind, pattern in _PATTERNS.items():
        m = pattern.match(prompt)
        if m:
            return kind, {k: (v or "") for k, v in m.groupdict().items()}
    raise ValueError(f"{prompt!r} is not a toy-world prompt")


def attribute_alternatives(prompt: str, universe: list[str] | None = None) -> dict[str, list[str]]:
    """Prompts of the world that differ from ``prompt`` in exactly one attribute:
    colour / shape / size: one such field changed; binding (stacks): the two colours swapped."""
    universe = universe or all_prompts()
    kind, fields = prompt_fields(prompt)
    out: dict[str, list[str]] = {a: [] for a in ("colour", "shape", "size", "binding")}
    for other in universe:
        if other == prompt:
            continue
        try:
            other_kind, other_fields = prompt_fields(other)
        except ValueError:
            continue
        if other_kind != kind:
            continue
        changed = {k for k in fields if fields[k] != other_fields[k]}
        for attribute, names in _FIELDS.items():
            if len(changed) == 1 and changed <= set(names):
                out[attribute].append(other)
        if kind == "stack" and changed == {"top_colour", "base_colour"} and \
                other_fields["top_colour"] == fields["base_colour"] and \
                other_fields["base_colour"] == fields["top_colour"]:
            out["binding"].append(other)
    return out


@torch.no_grad()
def token_separation(encoder, first: str, second: str) -> dict[str, float]:
    """Cosines between two captions' token sequences: over the whole (flattened) sequence, the lowest per-token
    cosine, and the pooled (end-of-text) embeddings'."""
    tokens, pooled = encoder.encode([first, second])
    per_token = F.cosine_similarity(tokens[0], tokens[1], dim=-1)
    return {"sequence": float(F.cosine_similarity(tokens[0].flatten(), tokens[1].flatten(), dim=0)),
            "lowest_token": float(per_token.min()),
            "pooled": float(F.cosine_similarity(pooled[0], pooled[1], dim=0))}


@dataclass
class ProbeImage:
    """One ground-truth render with its caption's parts: the prompt and the view word the prior was taught."""

    image: torch.Tensor  # (3, H, W) sRGB in [0, 1]
    prompt: str
    view: str
    azimuth: float = 0.0  # degrees: the camera, for a camera-conditioned prior
    elevation: float = 0.0


def probe_images(prompts: list[str], size: int, per_prompt: int = 1, seed: int = 0,
                 shading: str = "albedo") -> list[ProbeImage]:
    """Ground-truth renders of each prompt from random cameras in the training ranges (elevation 0-40 deg, so the
    view word is front / side / back), on random solid backgrounds."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for prompt in prompts:
        scene = scene_for_prompt(prompt)
        az = 360 * torch.rand(per_prompt, generator=gen)
        el = 40 * torch.rand(per_prompt, generator=gen)
        cams = orbit_cameras(az, el, 3.0 + 0.6 * torch.rand(per_prompt, generator=gen), 40.0)
        background = torch.rand(per_prompt, 3, generator=gen)
        light = F.normalize(cams.position + 0.5 * torch.randn(per_prompt, 3, generator=gen), dim=-1)
        img, _ = render_scene(scene, cams, size, background, shading, light)
        for k in range(per_prompt):
            out.append(ProbeImage(linear_to_srgb(img[k]).permute(2, 0, 1), prompt,
                                  view_label(float(az[k]), float(el[k])), float(az[k]), float(el[k])))
    return out


def view_probe_images(prompts: list[str], size: int, per_view: int = 1, seed: int = 0) -> list[ProbeImage]:
    """Renders of front-facing prompts from within 30 deg of the front and of the back (elevation 0-30 deg)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for prompt in prompts:
        scene = scene_for_prompt(prompt)
        for view, centre in (("front", 0.0), ("back", 180.0)):
            az = centre + 60 * torch.rand(per_view, generator=gen) - 30
            el = 30 * torch.rand(per_view, generator=gen)
            cams = orbit_cameras(az, el, 3.3, 40.0)
            img, _ = render_scene(scene, cams, size, torch.rand(per_view, 3, generator=gen))
            out += [ProbeImage(linear_to_srgb(img[k]).permute(2, 0, 1), prompt, view, float(az[k]), float(el[k]))
                    for k in range(per_view)]
    return out


def caption(prompt: str, view: str) -> str:
    return f"{prompt}, {view} view"


def candidate_sets(item: ProbeImage, attributes=ATTRIBUTES, universe: list[str] | None = None
                   ) -> dict[str, list[str]]:
    """Per attribute, the captions the true one competes with (true caption first); empty attributes dropped."""
    alternatives = attribute_alternatives(item.prompt, universe)
    sets = {}
    for attribute in attributes:
        if attribute == "view":
            others = [caption(item.prompt, v) for v in VIEW_WORDS if v != item.view]
        else:
            others = [caption(p, item.view) for p in alternatives.get(attribute, [])]
        if others:
            sets[attribute] = [caption(item.prompt, item.view), *others]
    return sets


@torch.no_grad()
def denoising_errors(guidance, images: torch.Tensor, captions: list[list[str]], timesteps: list[int],
                     seed: int = 0, batch: int = 256, cameras: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Per image, the mean epsilon-prediction error of each of its captions, summed over ``timesteps`` (the same
    noise for every caption of an image, as the diffusion-classifier paper does). ``cameras`` (N, 2): each image's
    azimuth and elevation, for a camera-conditioned prior."""
    gen = torch.Generator().manual_seed(seed)
    x0 = guidance.encode_images(images)
    jobs = []  # (image index, caption index, timestep index)
    noises = torch.randn(len(images), len(timesteps), *x0.shape[1:], generator=gen)
    for i, caps in enumerate(captions):
        jobs += [(i, c, k) for c in range(len(caps)) for k in range(len(timesteps))]
    flat_captions = sorted({c for caps in captions for c in caps})
    tokens, _ = guidance.text_encoder.encode(flat_captions)
    row = {c: j for j, c in enumerate(flat_captions)}
    errors = [torch.zeros(len(caps)) for caps in captions]
    t_all = torch.tensor(timesteps)
    for start in range(0, len(jobs), batch):
        chunk = jobs[start : start + batch]
        i = torch.tensor([j[0] for j in chunk])
        k = torch.tensor([j[2] for j in chunk])
        t = t_all[k]
        noise = noises[i, k]
        abar = guidance.alphas_cumprod[t].view(-1, 1, 1, 1).cpu()
        x_t = abar.sqrt() * x0[i] + (1 - abar).sqrt() * noise
        emb = tokens[[row[captions[j[0]][j[1]]] for j in chunk]]
        eps = guidance.predict_noise(x_t.to(guidance.device), t.to(guidance.device), emb,
                                     cameras[i] if cameras is not None else None).cpu()
        err = (eps - noise).pow(2).flatten(1).mean(-1)
        for (im, c, _), e in zip(chunk, err):
            errors[im][c] += float(e)
    return errors


def diffusion_classifier(guidance, items: list[ProbeImage], attributes=ATTRIBUTES,
                         timesteps=(100, 250, 400, 550, 700, 850), seed: int = 0) -> dict[str, float]:
    """Accuracy per attribute (the true caption has the lowest error among it and its one-attribute
    alternatives), the accuracy over the union of all alternatives ("all"), and the candidate counts."""
    sets = [candidate_sets(item, attributes) for item in items]
    union = [list(dict.fromkeys(c for s in per_item.values() for c in s)) for per_item in sets]
    cameras = torch.tensor([[it.azimuth, it.elevation] for it in items])
    errors = denoising_errors(guidance, torch.stack([it.image for it in items]), union, list(timesteps), seed,
                              cameras=cameras)
    hits: dict[str, list[float]] = {}
    for per_item, caps, err in zip(sets, union, errors):
        score = dict(zip(caps, err.tolist()))
        for attribute, candidates in per_item.items():
            hits.setdefault(attribute, []).append(float(min(candidates, key=score.get) == candidates[0]))
        hits.setdefault("all", []).append(float(min(caps, key=score.get) == caps[0]))
    return {name: sum(v) / len(v) for name, v in hits.items()} | {f"n_{name}": len(v) for name, v in hits.items()}


def main(argv=None) -> int:
    import argparse

    from instant3d.models.text_encoder import TextEncoder

    parser = argparse.ArgumentParser(description="Token separation of caption pairs the prior must tell apart.")
    parser.add_argument("text_towers", nargs="+", help="CLIP or Stable Diffusion-style folders")
    args = parser.parse_args(argv)
    encoders = {folder: TextEncoder.from_folder(folder) for folder in args.text_towers}
    print("| captions | " + " | ".join(f"{f}: sequence / lowest token / pooled" for f in encoders) + " |")
    print("| --- |" + " --- |" * len(encoders))
    for first, second in SEPARATION_PAIRS:
        cells = []
        for encoder in encoders.values():
            s = token_separation(encoder, first, second)
            cells.append(f"{s['sequence']:.3f} / {s['lowest_token']:.3f} / {s['pooled']:.3f}")
        print(f"| {first} / {second} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
