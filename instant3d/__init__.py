"""instant3d: text -> 3D in one forward pass (a reproduction of Instant3D, arXiv 2311.08403)."""

from instant3d.io.checkpoint import CheckpointError
from instant3d.config import Instant3DConfig, preset_config
from instant3d.pipeline import Instant3DOutput, Instant3DPipeline
from instant3d.models.text_encoder import PromptError, PromptTruncatedWarning, TextEncoderError

__all__ = [
    "CheckpointError",
    "Instant3DConfig",
    "Instant3DOutput",
    "Instant3DPipeline",
    "PromptError",
    "PromptTruncatedWarning",
    "TextEncoderError",
    "preset_config",
]
