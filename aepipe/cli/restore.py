"""Back to images: ``decode`` (stored codes, a .npy of codes, or images reconstructed),
``compress`` (quantised codes into one compact file), ``decompress`` (that file -> PNGs) and
``restore`` (a restoration model applied to folders of images)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from aepipe.cli.common import add_config_args, config_from_args, emit
from aepipe.errors import ConfigError


def _load_codes(path: str) -> np.ndarray:
    try:
        codes = np.load(path, allow_pickle=False)  # never unpickle user data
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read codes from {path}: {exc}") from None
    if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.number):
        raise ConfigError(f"{path} must hold a 2-D numeric array (N, code size), not {codes.dtype} {codes.shape}")
    return codes.astype(np.float32)


def _cmd_decode(args: argparse.Namespace) -> int:
    from aepipe.restore.decode import decode_run

    cfg = config_from_args(args)
    emit(
        decode_run(
            cfg,
            args.out,
            ids=args.id,
            codes=_load_codes(args.codes) if args.codes else None,
            images=args.image,
            grid=args.grid,
        )
    )
    return 0


def _cmd_compress(args: argparse.Namespace) -> int:
    from aepipe.restore.compress import compress_run

    emit(compress_run(config_from_args(args), args.out, args.dtype, ids=args.id, images=args.image))
    return 0


def _cmd_decompress(args: argparse.Namespace) -> int:
    from aepipe.restore.compress import decompress_run

    result = decompress_run(config_from_args(args), args.file, args.out)
    result.files = result.files[:20]  # a summary on stdout, not one line per item
    emit(result)
    return 0


def _cmd_restore(args: argparse.Namespace) -> int:
    from aepipe.restore.apply import restore_files

    if args.batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    emit(restore_files(config_from_args(args), args.inputs, args.out, args.batch_size, args.overwrite))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "decode",
        help="stored codes, a .npy of codes, or images -> PNG files (+ AE/PCA grid)",
        description="Turn codes back into images with the run's decoder: stored items by id, a .npy of codes "
        "made by the run's model, or image files reconstructed through the autoencoder. One PNG per item; "
        "--grid adds original / autoencoder / PCA at the same code size.",
        epilog="example:\n  aepipe decode --run-dir runs/photos --id cats/001.jpg cats/002.jpg --out decoded --grid",
    )
    add_config_args(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--id", nargs="+", help="stored ids: decode their codes")
    what.add_argument("--codes", help=".npy (N, code size) of codes made by the run's model")
    what.add_argument("--image", nargs="+", help="image files: reconstruct them through the autoencoder")
    p.add_argument("--out", required=True, type=Path, help="folder for the PNG files")
    p.add_argument("--grid", action="store_true", help="also grid.png: original / autoencoder / PCA (same code size)")
    p.set_defaults(func=_cmd_decode)

    p = sub.add_parser(
        "compress",
        help="quantised codes + ids + model id in one compact file",
        description="Write the codes of stored items (or of image files) as one compact Parquet file: "
        "quantised codes (float32, float16, or int8 with a per-dimension scale), ids and the model id; "
        "prints the bytes per item.",
        epilog="example:\n  aepipe compress --run-dir runs/photos --dtype int8 --out photos.codes.parquet",
    )
    add_config_args(p)
    p.add_argument("--out", required=True, type=Path, help="the code file to write (Parquet)")
    p.add_argument("--dtype", choices=["float32", "float16", "int8"], default="int8", help="code quantisation")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--id", nargs="+", help="only these stored ids (default: the whole store)")
    which.add_argument("--image", nargs="+", help="encode these image files instead of reading the store")
    p.set_defaults(func=_cmd_compress)

    p = sub.add_parser(
        "decompress",
        help="a file from `aepipe compress` -> one PNG per item",
        description="Decode a file written by `aepipe compress` with the run's model (the model id must "
        "match) into one PNG per item.",
        epilog="example:\n  aepipe decompress --run-dir runs/photos photos.codes.parquet --out restored",
    )
    add_config_args(p)
    p.add_argument("file", type=Path, help="code file written by `aepipe compress`")
    p.add_argument("--out", required=True, type=Path, help="folder for the PNG files")
    p.set_defaults(func=_cmd_decompress)

    p = sub.add_parser(
        "restore",
        help="apply the run's model to folders of images (denoise, colorize, ...)",
        description="Run the run's restoration model (training.task: denoise, colorize, remove_watermark) "
        "over image files and folders; outputs keep the relative paths, bad files are quarantined, "
        "finished outputs are skipped on a rerun.",
        epilog="example:\n  aepipe restore --run-dir runs/denoise scans/ --out cleaned/",
    )
    add_config_args(p)
    p.add_argument("inputs", nargs="+", metavar="IN", help="image files or folders (recursive)")
    p.add_argument("--out", required=True, type=Path, help="output folder: same relative paths, as PNG")
    p.add_argument("--batch-size", type=int, default=256, help="tiles per forward pass")
    p.add_argument("--overwrite", action="store_true", help="redo outputs that exist (default: skip them, resume)")
    p.set_defaults(func=_cmd_restore)
