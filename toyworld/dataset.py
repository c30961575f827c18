"""Rendered toy-world datasets for the priors: random views of every prompt, cached as uint8 safetensors.

Views come from the same distribution as generator training (cameras, random backgrounds, shading modes), so
the priors model exactly the images SDS will show them. Images are stored sRGB (what a camera would record).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from instant3d.render.color import linear_to_srgb
from instant3d.io.files import atomic_path

from training.sampling import CameraRanges, sample_views
from .render import render_scene
from .scenes import scene_for_prompt

DEFAULT_SHADING = {"albedo": 0.5, "lambertian": 0.4, "textureless": 0.1}


def view_label(azimuth: float, elevation: float) -> str:
    """The nearest of front / side / back / overhead (azimuth 0 = front)."""
    if elevation > 60:
        return "overhead"
    a = abs(((azimuth + 180) % 360) - 180)
    return "front" if a <= 45 else "back" if a >= 135 else "side"


@dataclass
class RenderedSet:
    images: torch.Tensor  # (N, H, W, 3) uint8 sRGB
    prompt_index: torch.Tensor  # (N,) into ``prompts``
    azimuth: torch.Tensor  # (N,) degrees
    elevation: torch.Tensor
    textureless: torch.Tensor  # (N,) bool: shape-only renders (their colour words do not show)
    prompts: list[str]
    detail: torch.Tensor | None = None  # (N, H, W) uint8: coverage by small named parts and what lies in line
    # with them along z (``render_scene(return_detail=True)``) x 255; None in sets cached before it was kept

    def captions(self, with_view: bool) -> list[str]:
        out = []
        for i in range(len(self.prompt_index)):
            text = self.prompts[int(self.prompt_index[i])]
            if with_view:
                text += f", {view_label(float(self.azimuth[i]), float(self.elevation[i]))} view"
            out.append(text)
        return out


def render_set(prompts: list[str], views_per_prompt: int, size: int, seed: int = 0,
               ranges: CameraRanges | None = None, shading: dict[str, float] | None = None,
               batch: int = 16) -> RenderedSet:
    """``views_per_prompt`` random views of each prompt at ``size``^2 (shading drawn per batch of views)."""
    ranges = ranges or CameraRanges()
    shading = shading or DEFAULT_SHADING
    gen = torch.Generator().manual_seed(seed)
    images, index, az, el, flat, detail = [], [], [], [], [], []
    for k, prompt in enumerate(prompts):
        scene = scene_for_prompt(prompt)
        for start in range(0, views_per_prompt, batch):
            n = min(batch, views_per_prompt - start)
            views = sample_views(n, ranges, shading, gen)
            img, _, part = render_scene(scene, views.cameras, size, views.background, views.shading,
                                        views.light_dirs, return_detail=True)
            images.append((linear_to_srgb(img) * 255 + 0.5).to(torch.uint8))
            detail.append((part * 255 + 0.5).to(torch.uint8))
            index.append(torch.full((n,), k))
            az.append(views.azimuth)
            el.append(views.elevation)
            flat.append(torch.full((n,), views.shading == "textureless"))
    return RenderedSet(torch.cat(images), torch.cat(index), torch.cat(az), torch.cat(el), torch.cat(flat),
                       list(prompts), torch.cat(detail))


def save_set(data: RenderedSet, path) -> None:
    tensors = {"images": data.images, "prompt_index": data.prompt_index, "azimuth": data.azimuth,
               "elevation": data.elevation, "textureless": data.textureless}
    if data.detail is not None:
        tensors["detail"] = data.detail
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, tmp, metadata={"prompts": "\n".join(data.prompts)})


def load_set(path) -> RenderedSet:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        prompts = f.metadata()["prompts"].split("\n")
    t = load_file(str(path))
    return RenderedSet(t["images"], t["prompt_index"], t["azimuth"], t["elevation"], t["textureless"], prompts,
                       t.get("detail"))


def cached_set(path, prompts, views_per_prompt, size, seed=0, need_detail: bool = False, **options) -> RenderedSet:
    """Load the rendered set at ``path`` if it matches (and, with ``need_detail``, holds the detail coverage), else
    render and save it."""
    path = Path(path)
    if path.is_file():
        data = load_set(path)
        if data.prompts == list(prompts) and data.images.shape[0] == len(prompts) * views_per_prompt \
                and data.images.shape[1] == size and (data.detail is not None or not need_detail):
            return data
    data = render_set(prompts, views_per_prompt, size, seed, **options)
    save_set(data, path)
    return data
