"""Convert the official Instant3D release (``model-pretrained.pth``) into an instant3d checkpoint folder.

    python -m instant3d.convert_official model-pretrained.pth converted/ --text-encoder stable-diffusion-2-1-base
    instant3d-convert-official model-pretrained.pth converted/ --text-encoder stable-diffusion-2-1-base

Nothing in the file is executed: it is refused, naming them, if its pickle would import anything beyond plain
tensors and containers (``instant3d.io.official``). The architecture is read from the tensor shapes
(``instant3d.io.official_layout``), the names are mapped onto ours, and the folder (``config.json``,
``model.safetensors``, a ``README.md`` model card with the source's sha256 and the conventions applied) is written
atomically. ``--text-encoder`` names a Stable Diffusion 2.1 folder (its ``tokenizer/`` and ``text_encoder/`` are
used where they are, not copied); without it the converted model works from prompt embeddings only.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from instant3d.io.checkpoint import CheckpointError, save_checkpoint
from instant3d.io.official import read_official_generator
from instant3d.io.official_layout import official_config, official_to_ours

CONVENTIONS = """\
- style from a second token transformer over the tokens (the official `text_emb2eot`), not a pooled embedding;
- GroupNorm groups {groups} in the decoder stages and {out_groups} before `conv_out` (the official rules);
- albedo `sigmoid(x) * 1.002 - 0.001` (the official evaluation branch), already in display space: previews,
  videos and textures show it without an sRGB curve;
- the official camera frame is left-handed with its front at -z: the decoded planes are flipped so that the
  scene is mirrored z -> -z, and the object faces +z (azimuth 0) like every instant3d model;
- box half-size 1.75, field of view 75 deg, camera distance 4.29 (the official evaluation setup). The official
  renders use a grey (0.5) background; this model's previews default to white.
"""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_card(source: Path, digest: str, config, parameters: int, text_encoder: str | None) -> str:
    g = config.generator
    text = (f"Text encoder: `{text_encoder}` (used in place, not copied)." if text_encoder else
            "No text encoder: call the pipeline with `prompt_embeds=` (Stable Diffusion 2.1-base's "
            "`last_hidden_state`, 77 x 1024), or convert again with `--text-encoder <SD 2.1 folder>`.")
    return (
        "# Instant3D, converted from the official release\n\n"
        f"Source: `{source.name}`, sha256 `{digest}`.\n"
        f"Converted by `python -m instant3d.convert_official` into {parameters:,} parameters: tokens "
        f"{config.text.num_tokens} x {config.text.token_dim}, decoder stages {list(g.block_out_channels)}, "
        f"{g.layers_per_block} res-blocks each, triplane 3 x {g.triplane_channels} x {g.triplane_resolution}^2.\n\n"
        f"{text}\n\nConventions applied:\n"
        + CONVENTIONS.format(groups=list(g.norm_groups), out_groups=g.norm_out_groups)
        + "\nThe weights are the official authors'; see their repository for the licence and terms of use.\n"
    )


def convert(source, out, text_encoder=None, norm_groups: int | None = None, head_width: int | None = None) -> Path:
    """Convert ``source`` (official .pth or .safetensors) into the checkpoint folder ``out``; returns ``out``."""
    from instant3d.models.model import Instant3DModel
    from instant3d.models.text_encoder import TextEncoder
    from instant3d.pipeline import check_text_encoder_matches

    source, out = Path(source), Path(out)
    state = read_official_generator(source)
    config = official_config(state, norm_groups, head_width)
    model = Instant3DModel(config)
    mapped = official_to_ours(state, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    model.load_state_dict(mapped, strict=True)
    encoder_path = None
    if text_encoder is not None:
        encoder_path = str(Path(text_encoder).resolve())
        check_text_encoder_matches(config, TextEncoder.from_folder(encoder_path))
    digest = sha256(source)  # a 1 GB file: read once
    card = model_card(source, digest, config, model.num_parameters(), encoder_path)
    return save_checkpoint(model, out, text_encoder_path=encoder_path,
                           extra={"converted_from": {"file": source.name, "sha256": digest}},
                           extra_files={"README.md": card.encode()})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="the official model-pretrained.pth, or a .safetensors of its G_ema")
    parser.add_argument("out", help="the checkpoint folder to write (replaced atomically if it exists)")
    parser.add_argument("--text-encoder", default=None,
                        help="a Stable Diffusion 2.1(-base) folder (with tokenizer/ and text_encoder/)")
    parser.add_argument("--norm-groups", type=int, default=None,
                        help="the official norm_num_groups, if the checkpoint was trained with a non-default one "
                             "(shapes cannot show it; default: the official rule, 8 for the release)")
    parser.add_argument("--head-width", type=int, default=None,
                        help="channels per cross-attention head, if not the official 16 (shapes cannot show it)")
    args = parser.parse_args(argv)
    try:
        out = convert(args.source, args.out, args.text_encoder, args.norm_groups, args.head_width)
    except (CheckpointError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}\n  python app.py --checkpoint {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
