"""Shared fixtures. Nothing here reaches the network: offline flags are set before any library loads."""

import os
import sys
import types

os.environ.update(GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
                  TRANSFORMERS_OFFLINE="1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


class _NoNerfaccCuda(types.ModuleType):
    """nerfacc reaches CUDA through ``from ._backend import _C``: make any such call fail loudly on CPU."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise RuntimeError(f"a nerfacc CUDA op was called ({name}); only the dense CPU API may be used")


if not torch.cuda.is_available():
    sys.modules["nerfacc.cuda._backend"] = _NoNerfaccCuda("nerfacc.cuda._backend")


@pytest.fixture(scope="session")
def tiny_text_folder(tmp_path_factory):
    from instant3d.testing.random_models import save_random_clip_text

    return save_random_clip_text(tmp_path_factory.mktemp("text") / "sd", layout="sd")


@pytest.fixture(scope="session")
def tiny_text_encoder(tiny_text_folder):
    from instant3d.models.text_encoder import TextEncoder

    return TextEncoder.from_folder(tiny_text_folder)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_text_encoder):
    from instant3d.io.checkpoint import save_checkpoint
    from instant3d.config import preset_config
    from instant3d.models.model import Instant3DModel

    torch.manual_seed(0)
    config = preset_config("tiny", num_tokens=tiny_text_encoder.max_length, token_dim=tiny_text_encoder.token_dim)
    model = Instant3DModel(config)
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny", text_encoder=tiny_text_encoder)


@pytest.fixture()
def tiny_pipeline(tiny_checkpoint):
    from instant3d import Instant3DPipeline

    return Instant3DPipeline.from_pretrained(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="session")
def fitted_snowman():
    """A small-preset field whose triplane was fitted to an analytic snowman: a real object to render."""
    from instant3d.config import preset_config
    from instant3d.models.field import TriplaneField
    from instant3d.testing.analytic import fit_triplane, snowman

    torch.manual_seed(0)
    cfg = preset_config("small")
    field = TriplaneField(cfg.field, cfg.generator.triplane_channels)
    planes = fit_triplane(field, snowman(), cfg.generator.triplane_resolution, steps=150)
    return field.requires_grad_(False), planes


@pytest.fixture(scope="session")
def default_pipeline():
    """The bundled default checkpoint, as the app and the README's commands load it."""
    from instant3d.pipeline import Instant3DPipeline

    return Instant3DPipeline.from_pretrained(device="cpu")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``speed`` run first: they time the product against its budgets, and minutes of other tests
    before them (servers left running, a warm and throttled VM) slowed the same measurement by a third."""
    items.sort(key=lambda item: item.get_closest_marker("speed") is None)
