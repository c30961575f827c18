"""The words a checkpoint trained on, so the app can say when a prompt uses words the model never saw."""

from __future__ import annotations

import re
from pathlib import Path

TRAINING_PROMPTS_NAME = "training_prompts.txt"  # optional, in a checkpoint folder: the prompts it trained on


def prompt_words(text: str) -> list[str]:
    """Lower-case words of a prompt, any script, apostrophes kept inside words; numbers and '3d'-like tokens
    (anything with a digit) are left out, as no vocabulary lists them."""
    words = re.findall(r"[^\W_]+(?:['\u2019][^\W_]+)*", text.lower())
    return [w for w in words if not any(c.isdigit() for c in w)]


def load_vocabulary(folder: Path) -> frozenset[str] | None:
    """The words of the checkpoint's training prompts; None (no note is given) when the checkpoint has no
    non-empty training_prompts.txt."""
    path = Path(folder) / TRAINING_PROMPTS_NAME
    if not path.is_file():
        return None
    return frozenset(prompt_words(path.read_text(encoding="utf-8"))) or None


def unknown_words_note(text: str, vocabulary: frozenset[str] | None) -> str | None:
    """A note naming the prompt's words the model never saw in training (it can only guess at those)."""
    if not vocabulary:
        return None
    unknown = list(dict.fromkeys(w for w in prompt_words(text) if w not in vocabulary))
    if not unknown:
        return None
    shown = ", ".join(repr(w) for w in unknown[:8]) + (", ..." if len(unknown) > 8 else "")
    known = ", ".join(sorted(vocabulary)[:60]) + (", ..." if len(vocabulary) > 60 else "")
    return (f"this model never saw the word{'s' if len(unknown) > 1 else ''} {shown} in training, so the object "
            f"is a guess. Its words: {known}")
