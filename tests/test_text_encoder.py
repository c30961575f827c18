import shutil
import warnings

import pytest
import torch

from instant3d.models.text_encoder import PromptError, PromptTruncatedWarning, TextEncoder, TextEncoderError, clean_prompt
from instant3d.testing.random_models import save_random_clip_text


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return save_random_clip_text(tmp_path_factory.mktemp("clip") / "clip", layout="clip", seed=0)


def test_loads_a_stable_diffusion_folder(tiny_text_folder):
    enc = TextEncoder.from_folder(tiny_text_folder)
    tokens, pooled = enc.encode(["a red cube", "a blue sphere"])
    assert tokens.shape == (2, 16, 32) and pooled.shape == (2, 32)
    assert not torch.allclose(tokens[0], tokens[1])


def test_loads_a_plain_clip_folder_and_matches_the_full_clip_text_tower(clip_folder):
    from transformers import AutoTokenizer, CLIPModel

    enc = TextEncoder.from_folder(clip_folder)
    tokens, pooled = enc.encode("a red cube")
    full = CLIPModel.from_pretrained(clip_folder, use_safetensors=True)
    ids = AutoTokenizer.from_pretrained(clip_folder)(["a red cube"], padding="max_length", max_length=16,
                                                     return_tensors="pt").input_ids
    with torch.no_grad():
        ref = full.text_model(ids)
    assert torch.allclose(tokens, ref.last_hidden_state, atol=1e-6)
    assert torch.allclose(pooled, ref.pooler_output, atol=1e-6)


def test_tokens_are_padded_to_the_max_length(tiny_text_encoder):
    short, _ = tiny_text_encoder.encode("a")
    assert short.shape[1] == tiny_text_encoder.max_length == 16


@pytest.mark.parametrize(
    "remove, message",
    [("tokenizer", "no tokenizer/ subfolder"), ("text_encoder/model.safetensors", "model.safetensors is missing"),
     ("text_encoder/config.json", "config.json is missing"), ("tokenizer/tokenizer.json", "no tokenizer in")],
)
def test_incomplete_folder_names_the_missing_piece(tmp_path, tiny_text_folder, remove, message):
    folder = tmp_path / "sd"
    shutil.copytree(tiny_text_folder, folder)
    target = folder / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(TextEncoderError, match=message):
        TextEncoder.from_folder(folder)


def test_missing_folder(tmp_path):
    with pytest.raises(TextEncoderError, match="does not exist"):
        TextEncoder.from_folder(tmp_path / "nowhere")


def test_embeddings_are_cached(tiny_text_folder):
    enc = TextEncoder.from_folder(tiny_text_folder)
    calls = []
    enc.model.register_forward_hook(lambda *a: calls.append(1))
    first = enc.encode("a green torus")
    second = enc.encode("  a green   torus ")  # the same prompt once cleaned
    assert len(calls) == 1
    assert torch.equal(first[0], second[0])


def test_long_prompt_is_truncated_with_a_warning(tiny_text_encoder):
    long = "a very " * 50 + "red cube"
    with pytest.warns(PromptTruncatedWarning, match="at most 16"):
        tokens, _ = tiny_text_encoder.encode(long)
    assert tokens.shape[1] == 16
    assert tiny_text_encoder.truncation_note("a red cube") is None


def test_bad_and_unusual_prompts():
    for bad in ["", "   ", "\n\t", "\x00\x01"]:
        with pytest.raises(PromptError, match="empty"):
            clean_prompt(bad)
    with pytest.raises(PromptError, match="must be text"):
        clean_prompt(None)
    assert clean_prompt("a\x00red\tcube\u200b") == "a red cube"
    assert clean_prompt("  un café  ☕ 🐱 ") == "un café ☕ 🐱"


def test_emoji_and_non_ascii_encode(tiny_text_encoder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptTruncatedWarning)
        a, _ = tiny_text_encoder.encode("🐱 猫 شسي")
        b, _ = tiny_text_encoder.encode("🐶 犬 שלום")
    assert torch.isfinite(a).all() and not torch.allclose(a, b)


def test_every_tokenizer_call_holds_the_encoders_lock(tiny_text_folder):
    """The app reaches one encoder from two thread pools; a fast tokenizer used by two threads at once raises
    "Already borrowed". Every call into it, the truncation note's included, must hold the encoder's lock."""
    encoder = TextEncoder.from_folder(tiny_text_folder)
    real, calls = encoder.tokenizer, []

    class Watching:
        def __getattr__(self, name):
            return getattr(real, name)

        def __call__(self, *args, **kwargs):
            calls.append(encoder._lock._is_owned())
            return real(*args, **kwargs)

    encoder.tokenizer = Watching()
    encoder.truncation_note("a red cube " * 20)
    encoder.token_count("a red cube")
    encoder.encode(["a blue cube " * 20, "a green cone"])
    assert len(calls) >= 4 and all(calls), calls
