"""A frozen CLIP text encoder loaded from a local folder, with a cache of prompt embeddings.

Two folder layouts are accepted:
- a Stable Diffusion folder: ``tokenizer/`` and ``text_encoder/`` subfolders (e.g. SD 2.1);
- a plain transformers CLIP folder (``CLIPModel`` or ``CLIPTextModel``) with its tokenizer files beside it.

Token embeddings are ``last_hidden_state`` padded to the tokenizer's max length with no attention mask,
exactly what Stable Diffusion's UNet sees (the official code does the same); the pooled embedding is the text
model's ``pooler_output`` (the end-of-text token's state).
"""

from __future__ import annotations

import contextlib
import json
import threading
import unicodedata
import warnings
from collections import OrderedDict
from pathlib import Path

import torch

TOKENIZER_FILES = ("tokenizer.json", "vocab.json")  # a fast tokenizer, or a slow BPE one (with merges.txt)


class TextEncoderError(ValueError):
    """A text-encoder folder that cannot be loaded; the message names the missing piece."""


class PromptError(ValueError):
    """A prompt that cannot be encoded (empty, or not text)."""


class PromptTruncatedWarning(UserWarning):
    """The prompt is longer than the encoder's token limit; the tail was dropped."""


def clean_prompt(prompt) -> str:
    """Normalise a prompt: NFC, control characters removed, whitespace collapsed. Empty -> PromptError."""
    if not isinstance(prompt, str):
        raise PromptError(f"the prompt must be text, got {type(prompt).__name__}")
    text = unicodedata.normalize("NFC", prompt)
    text = "".join(" " if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch for ch in text)
    text = " ".join(text.split())
    if not text:
        raise PromptError("the prompt is empty: describe an object, e.g. 'a red cube on top of a blue sphere'")
    return text


def _locate(folder: Path) -> tuple[Path, Path]:
    """(tokenizer folder, text model folder) of a Stable Diffusion or plain CLIP folder; clear errors otherwise."""
    if not folder.exists():
        raise TextEncoderError(f"text encoder folder {folder} does not exist")
    if not folder.is_dir():
        raise TextEncoderError(f"text encoder path {folder} is not a folder")
    if (folder / "text_encoder").is_dir() or (folder / "tokenizer").is_dir():  # Stable Diffusion layout
        tok_dir, model_dir = folder / "tokenizer", folder / "text_encoder"
        for part in (tok_dir, model_dir):
            if not part.is_dir():
                raise TextEncoderError(
                    f"{folder} looks like a Stable Diffusion folder but has no {part.name}/ subfolder"
                )
    else:
        tok_dir = model_dir = folder
    if not any((tok_dir / name).is_file() for name in TOKENIZER_FILES):
        raise TextEncoderError(f"no tokenizer in {tok_dir}: expected tokenizer.json (or vocab.json + merges.txt)")
    if (tok_dir / "vocab.json").is_file() and not (tok_dir / "tokenizer.json").is_file():
        if not (tok_dir / "merges.txt").is_file():
            raise TextEncoderError(f"tokenizer in {tok_dir} has vocab.json but no merges.txt")
    config = model_dir / "config.json"
    if not config.is_file():
        raise TextEncoderError(f"no text model config in {model_dir}: config.json is missing")
    model_type = json.loads(config.read_text()).get("model_type")
    if model_type not in ("clip", "clip_text_model"):
        raise TextEncoderError(f"{config} describes a {model_type!r} model; a CLIP text model is required")
    if not list(model_dir.glob("*.safetensors")):
        raise TextEncoderError(
            f"no weights in {model_dir}: model.safetensors is missing (only safetensors are loaded, never pickles)"
        )
    return tok_dir, model_dir


@contextlib.contextmanager
def quiet_transformers():
    """Loading a CLIPTextModel from a full CLIPModel folder lists every vision weight as 'unexpected'."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        logging.enable_progress_bar()


class TextEncoder:
    """prompt -> (token embeddings (L, D), pooled embedding (D,)), frozen, with an LRU cache of embeddings."""

    def __init__(self, tokenizer, model, folder: Path | None = None, cache_size: int = 256):
        self.tokenizer = tokenizer
        self.model = model.eval().requires_grad_(False)
        self.folder = folder
        self.max_length = int(tokenizer.model_max_length)
        if self.max_length > model.config.max_position_embeddings:
            self.max_length = int(model.config.max_position_embeddings)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        # One lock around every tokenizer call: a fast tokenizer raises "Already borrowed" when two threads change
        # its padding / truncation at once (the app's model queue and view queue both reach it). Re-entrant,
        # because encoding asks for truncation notes while it holds the lock.
        self._lock = threading.RLock()

    @classmethod
    def from_folder(cls, folder, device: str | torch.device = "cpu") -> "TextEncoder":
        from transformers import AutoTokenizer, CLIPTextModel

        folder = Path(folder)
        tok_dir, model_dir = _locate(folder)
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
            model = CLIPTextModel.from_pretrained(model_dir, use_safetensors=True, local_files_only=True)
        return cls(tokenizer, model.to(device), folder)

    @property
    def token_dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def token_count(self, prompt: str) -> int:
        """Tokens the prompt needs, start and end tokens included."""
        with self._lock:
            return len(self.tokenizer(prompt, truncation=False).input_ids)

    def truncation_note(self, prompt: str) -> str | None:
        """A message if the (cleaned) prompt exceeds the token limit, else None."""
        count = self.token_count(prompt)
        if count <= self.max_length:
            return None
        return (
            f"the prompt needs {count} tokens but the text encoder reads at most {self.max_length}: "
            f"everything after about {self.max_length - 2} tokens was ignored"
        )

    @torch.no_grad()
    def encode(self, prompts: list[str] | str):
        """Token embeddings (B, L, D) and pooled embeddings (B, D) of cleaned prompts, from the cache when known.

        Prompts longer than the encoder's limit are truncated with a ``PromptTruncatedWarning``.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        prompts = [clean_prompt(p) for p in prompts]
        with self._lock:
            return self._encode_clean(prompts)

    def _encode_clean(self, prompts: list[str]):
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            for p in missing:
                note = self.truncation_note(p)
                if note:
                    warnings.warn(note, PromptTruncatedWarning, stacklevel=2)
            ids = self.tokenizer(
                missing, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
            ).input_ids.to(self.device)
            out = self.model(input_ids=ids)
            for i, p in enumerate(missing):
                self._cache[p] = (out.last_hidden_state[i].float(), out.pooler_output[i].float())
        tokens, pooled = [], []
        for p in prompts:
            self._cache.move_to_end(p)
            t, q = self._cache[p]
            tokens.append(t)
            pooled.append(q)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return torch.stack(tokens), torch.stack(pooled)
