import warnings

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from instant3d import CheckpointError, Instant3DPipeline, PromptError, PromptTruncatedWarning
from instant3d.cache import ResultCache


def test_same_prompt_and_seed_give_the_same_triplane_and_frames(tiny_checkpoint):
    a = Instant3DPipeline.from_pretrained(tiny_checkpoint, device="cpu")("a red cube", seed=7)
    b = Instant3DPipeline.from_pretrained(tiny_checkpoint, device="cpu")("a red cube", seed=7)
    assert a is not b
    assert torch.equal(a.triplane, b.triplane)
    assert np.array_equal(a.render(30, 10, size=32), b.render(30, 10, size=32))
    assert np.array_equal(a.render(30, 10, size=32, quality="full"), b.render(30, 10, size=32, quality="full"))


def test_different_seed_or_prompt_changes_the_triplane(tiny_pipeline):
    base = tiny_pipeline("a red cube", seed=0).triplane
    assert not torch.equal(base, tiny_pipeline("a red cube", seed=1).triplane)
    assert not torch.equal(base, tiny_pipeline("a blue cube", seed=0).triplane)


def test_repeated_prompt_comes_from_the_cache(tiny_pipeline):
    first = tiny_pipeline("a red cube", seed=0)
    calls = []
    tiny_pipeline.model.generator.register_forward_hook(lambda *a: calls.append(1))
    again = tiny_pipeline(" a red  cube ", seed=0)
    assert again is first and calls == []


def test_cache_is_bounded_by_count_and_bytes():
    class Item:
        def __init__(self, n):
            self.n = n

        def nbytes(self):
            return self.n

    cache = ResultCache(max_items=3, max_bytes=100)
    for i in range(5):
        cache.put(i, Item(10))
    assert len(cache) == 3 and cache.get(0) is None and cache.get(4) is not None
    cache.put("big", Item(95))
    assert len(cache) == 1 and cache.get("big") is not None  # the newest always stays


def test_bad_prompts_and_seeds(tiny_pipeline):
    for bad in ["", "   ", "\x00"]:
        with pytest.raises(PromptError, match="empty"):
            tiny_pipeline(bad)
    for seed in [-1, 2**32, 1.5, "3", None]:
        with pytest.raises(ValueError, match="seed"):
            tiny_pipeline("a cube", seed=seed)
    assert tiny_pipeline("a cube", seed=2.0).seed == 2


def test_long_prompt_is_truncated_and_noted(tiny_pipeline):
    with pytest.warns(PromptTruncatedWarning):
        out = tiny_pipeline("a red cube " * 40, seed=0)
    assert out.notes and "at most 16" in out.notes[0]


def test_non_ascii_and_emoji_prompts_work(tiny_pipeline):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptTruncatedWarning)
        out = tiny_pipeline("🐱 ein Würfel", seed=0)
    assert torch.isfinite(out.triplane).all()


def test_views_and_field_queries(tiny_pipeline):
    out = tiny_pipeline("a red cube", seed=0)
    img = out.render(45, 20, size=48)
    assert img.shape == (48, 48, 3) and img.dtype == np.uint8
    full = out.render(45, 20, size=48, quality="full")
    assert full.shape == (48, 48, 3)
    points = torch.rand(100, 3) * 2 - 1
    assert out.density(points).shape == (100,) and (out.density(points) >= 0).all()
    alb = out.albedo(points)
    assert alb.shape == (100, 3) and (alb >= 0).all() and (alb <= 1).all()
    with pytest.raises(ValueError, match="elevation"):
        out.render(0, 100)
    with pytest.raises(ValueError, match="size"):
        out.render(0, 0, size=5000)
    with pytest.raises(ValueError, match="quality"):
        out.render(0, 0, quality="ultra")
    with pytest.raises(ValueError, match="shape"):
        out.density(torch.zeros(4, 2))


def test_orbit_video_is_h264_yuv420p_with_the_requested_frames(tiny_pipeline, tmp_path):
    out = tiny_pipeline("a red cube", seed=0)
    path = out.orbit_video(tmp_path / "orbit.mp4", frames=12, size=64, elevation=20)
    assert path.exists()
    meta = iio.immeta(path, plugin="FFMPEG")
    assert meta["codec"] == "h264" and meta["fps"] == 24
    frames = iio.imread(path, plugin="FFMPEG")
    assert frames.shape == (12, 64, 64, 3)
    import subprocess

    from imageio_ffmpeg import get_ffmpeg_exe

    info = subprocess.run([get_ffmpeg_exe(), "-i", str(path)], capture_output=True, text=True).stderr
    assert "yuv420p" in info
    with pytest.raises(ValueError, match="multiple of 16"):
        out.orbit_video(tmp_path / "bad.mp4", frames=2, size=40)


def test_no_default_checkpoint_gives_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr("instant3d.registry.DEFAULT_POINTER", tmp_path / "DEFAULT")
    with pytest.raises(CheckpointError, match="no bundled default checkpoint"):
        Instant3DPipeline.from_pretrained()


def test_text_encoder_of_another_shape_is_refused(tmp_path, tiny_checkpoint):
    from instant3d.io.checkpoint import load_model, save_checkpoint
    from instant3d.testing.random_models import save_random_clip_text

    other = save_random_clip_text(tmp_path / "wide", hidden=48, max_length=16)
    model, _ = load_model(tiny_checkpoint)
    save_checkpoint(model, tmp_path / "m", text_encoder_path=str(other))
    with pytest.raises(CheckpointError, match="16 tokens x 48 dims but the model was built for 16 x 32"):
        Instant3DPipeline.from_pretrained(tmp_path / "m", device="cpu")
