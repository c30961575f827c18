"""Train an Instant3D generator.

    python -m training.train --config training/configs/smoke.toml [section.key=value ...]
    torchrun --standalone --nproc_per_node 2 -m training.train --config FILE [overrides]   # many processes

Re-running the same command resumes from the newest readable checkpoint in run.output_dir.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from .config import load_config  # noqa: E402
from .trainer import Trainer, TrainingStopped  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a TOML file (see training/configs/)")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. optim.steps=200")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = load_config(args.config, args.overrides)
    trainer = Trainer(cfg)
    try:
        final = trainer.train()
    except TrainingStopped as exc:
        logging.getLogger("instant3d.train").error("%s", exc)
        return 3
    if final is not None:
        print(f"final checkpoint: {final} (step {trainer.step}, {trainer.views_per_prompt():.1f} views per prompt)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
