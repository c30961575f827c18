"""Orbit videos: frames -> H.264 MP4 (yuv420p, plays in every browser) through imageio-ffmpeg's bundled ffmpeg."""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import numpy as np

from instant3d.io.files import atomic_path


def write_mp4(frames, path, fps: int = 24, quality: int = 8) -> Path:
    """Encode uint8 frames (H, W, 3) to an MP4 at ``path``, atomically (temp file, then rename).

    H and W must be multiples of 16: yuv420p needs even sizes and we refuse ffmpeg's silent resizing.
    """
    frames = [np.asarray(f) for f in frames]
    if not frames:
        raise ValueError("an orbit video needs at least one frame")
    h, w = frames[0].shape[:2]
    if h % 16 or w % 16:
        raise ValueError(f"video frames must be a multiple of 16 pixels on each side, got {w}x{h}")
    path = Path(path)
    with atomic_path(path, suffix=".mp4") as tmp:
        writer = imageio.get_writer(
            tmp, format="FFMPEG", fps=fps, codec="libx264", pixelformat="yuv420p", quality=quality,
            macro_block_size=16, output_params=["-movflags", "+faststart"],
        )
        with writer:
            for frame in frames:
                writer.append_data(frame)
    return path
