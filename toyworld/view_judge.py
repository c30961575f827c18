"""A small judge of views: is this 32^2 image of a front-facing object (snowman, duck, house) seen from the front or
from the back? Trained on ground-truth renders only, in about a minute, with a fixed seed, so the prior's view
accuracy is scored by something that never saw a prior's sample. It judges at 32^2, the first prior's size, where
true fronts and backs are still told apart 97 % of the time; a 64^2 prior's samples are downsampled to it, so
priors of either size are judged by the same judge.

The evaluation CLIP cannot serve here: at 32^2 it tells true front renders from true back ones only 65 % of the
time (the nose, beak and door are a few pixels), so no prior could score well by it. This judge's accuracy on
fresh ground-truth renders is reported beside the samples' as their ceiling.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .prior_probe import view_probe_images
from .scenes import all_prompts, scene_for_prompt

VIEWS = ("front", "back")
JUDGE_SIZE = 32  # every prior's samples are judged at 32^2, whatever its own size, so priors are judged alike


class ViewJudge(nn.Module):
    """Four strided convolutions and a linear layer: front (0) or back (1) from an sRGB image in [0, 1]."""

    def __init__(self, width: int = 32, size: int = JUDGE_SIZE):
        super().__init__()
        self.size = size  # the image size it was trained at; ``judged_front`` resizes to it
        layers, channels = [], 3
        for out in (width, 2 * width, 4 * width, 4 * width):
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.GroupNorm(8, out), nn.SiLU()]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images * 2 - 1).mean(dim=(2, 3)))


def _batch(items):
    images = torch.stack([it.image for it in items])
    labels = torch.tensor([VIEWS.index(it.view) for it in items])
    return images, labels


def train_view_judge(size: int = JUDGE_SIZE, per_view: int = 48, steps: int = 400,
                     seed: int = 0) -> tuple[ViewJudge, float]:
    """A judge trained on renders of all 30 front-facing prompts from within 30 deg of the front and of the back
    (elevation 0-30 deg, random backgrounds), and its accuracy on fresh renders (another seed): its ceiling."""
    fronts = [p for p in all_prompts() if scene_for_prompt(p).front_facing]
    images, labels = _batch(view_probe_images(fronts, size, per_view, seed=9000 + seed))
    test_images, test_labels = _batch(view_probe_images(fronts, size, 4, seed=9500 + seed))
    torch.manual_seed(seed)
    judge = ViewJudge(size=size)
    optimizer = torch.optim.AdamW(judge.parameters(), lr=2e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(images), (64,), generator=gen)
        x = images[idx]
        flip = torch.rand(len(idx), generator=gen) < 0.5  # a mirrored front is still a front
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        loss = F.cross_entropy(judge(x), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    judge.eval().requires_grad_(False)
    accuracy = float((judge(test_images).argmax(-1) == test_labels).float().mean())
    return judge, accuracy


@torch.no_grad()
def judged_front(judge: ViewJudge, images: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the judge sees a front. Images (B, 3, H, W) in [0, 1], resized (antialiased bilinear) to the size
    the judge was trained at if they differ: a 64^2 prior's samples are judged at 32^2."""
    if images.shape[-1] != judge.size:
        images = F.interpolate(images, size=(judge.size, judge.size), mode="bilinear", antialias=True,
                               align_corners=False)
    return judge(images).argmax(-1) == 0
