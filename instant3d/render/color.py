"""Colour spaces. The field's albedo is linear; images shown to people and glTF base-colour textures are sRGB."""

from __future__ import annotations

import numpy as np
import torch


def _srgb_curve(x, lib):
    """The sRGB transfer function (IEC 61966-2-1) for values >= 0; above 1 the formula simply goes on."""
    return lib.where(x <= 0.0031308, 12.92 * x, 1.055 * lib.clip(x, 0.0031308, None) ** (1 / 2.4) - 0.055)


def linear_to_srgb(x):
    """The sRGB transfer function (IEC 61966-2-1) on values in [0, 1]; torch tensors or numpy arrays."""
    lib = torch if isinstance(x, torch.Tensor) else np
    return _srgb_curve(lib.clip(x, 0.0, 1.0), lib)


def linear_to_srgb_unbounded(x: torch.Tensor) -> torch.Tensor:
    """The sRGB curve continued above 1 (only negatives are clipped), for training renders.

    With the scaled sigmoid at alpha < 1 the albedo ranges over (0, 1/alpha); clipping at 1 would zero the gradient of
    every channel above 1, which at the start of training (raw 0 -> 1/alpha) is every channel of every solid pixel.
    Unclipped, a too-bright render reaches the prior as such and its gradient brings it back into range.
    """
    return _srgb_curve(x.clamp_min(0.0), torch)


def srgb_to_linear(x):
    lib = torch if isinstance(x, torch.Tensor) else np
    x = lib.clip(x, 0.0, 1.0)
    return lib.where(x <= 0.04045, x / 12.92, ((lib.clip(x, 0.04045, None) + 0.055) / 1.055) ** 2.4)


def to_uint8_srgb(linear):
    """Linear colours in [0, 1] (torch or numpy) -> display-ready sRGB uint8 numpy array."""
    if isinstance(linear, torch.Tensor):
        linear = linear.detach().cpu().numpy()
    return (linear_to_srgb(np.asarray(linear, dtype=np.float32)) * 255 + 0.5).astype(np.uint8)


def to_uint8_display(albedo_colour, space: str = "linear"):
    """uint8 display values of rendered colours: through the sRGB curve for linear albedo, as they are (clipped)
    for a model whose albedo is already in display space (a converted official checkpoint)."""
    if space == "linear":
        return to_uint8_srgb(albedo_colour)
    if isinstance(albedo_colour, torch.Tensor):
        albedo_colour = albedo_colour.detach().cpu().numpy()
    return (np.clip(np.asarray(albedo_colour, dtype=np.float32), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def to_display(colour, space: str = "linear"):
    """Float display values in [0, 1] (numpy or torch): the sRGB curve for linear colours, a clip otherwise."""
    if space == "linear":
        return linear_to_srgb(colour)
    return colour.clamp(0.0, 1.0) if isinstance(colour, torch.Tensor) else np.clip(colour, 0.0, 1.0)
