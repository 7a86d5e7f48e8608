"""Compact code files: quantised codes + ids + the model id, in one Parquet file.

``float32`` and ``float16`` keep the codes as they are (float16 rounds to 11 significant bits);
``int8`` maps each code dimension's range [min, max] over the file to 256 levels, with that
dimension's ``offset`` (min) and ``scale`` ((max - min) / 255) kept in the file's metadata, so
the error per value is at most scale / 2. The code column is fixed-size binary (code_size values
per item, little-endian); ids and codes are zstd-compressed by Parquet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aepipe.codes.encode import codes_of
from aepipe.config import PipelineConfig
from aepipe.errors import ConfigError, MissingArtifact
from aepipe.files import atomic_write_table
from aepipe.layout import RunLayout
from aepipe.restore.decode import (
    DecodeResult,
    decode_codes,
    image_model,
    model_for,
    read_image_files,
    stored_codes,
    write_pngs,
)

META_KEY = b"aepipe_codes"
DTYPES = ("float32", "float16", "int8")
FORMAT_VERSION = 1


@dataclass
class Quantised:
    values: np.ndarray  # (N, code) in the storage dtype
    dtype: str
    offset: np.ndarray | None = None  # (code,) float32, int8 only
    scale: np.ndarray | None = None  # (code,) float32, int8 only


def quantise(codes: np.ndarray, dtype: str) -> Quantised:
    """(N, code) float codes -> their stored form."""
    if dtype not in DTYPES:
        raise ConfigError(f"code dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    codes = np.asarray(codes, np.float32)
    if dtype == "float32":
        return Quantised(codes.astype("<f4"), dtype)
    if dtype == "float16":
        return Quantised(codes.astype("<f2"), dtype)
    lo = codes.min(0) if len(codes) else np.zeros(codes.shape[1], np.float32)
    hi = codes.max(0) if len(codes) else lo
    scale = np.where(hi > lo, (hi - lo) / 255.0, 1.0).astype(np.float32)  # a constant dimension: any scale
    q = np.clip(np.rint((codes - lo) / scale), 0, 255) - 128  # 256 levels centred on 0
    return Quantised(q.astype(np.int8), dtype, lo.astype(np.float32), scale)


def dequantise(q: Quantised) -> np.ndarray:
    """Stored form -> (N, code) float32."""
    if q.dtype == "int8":
        assert q.offset is not None and q.scale is not None  # set by quantise / read_codes for int8
        return ((q.values.astype(np.float32) + 128.0) * q.scale + q.offset).astype(np.float32)
    return q.values.astype(np.float32)


@dataclass
class CompressResult:
    path: str
    model_id: str
    n_items: int
    code_size: int
    dtype: str
    bytes_per_item: int  # the quantised code alone
    file_bytes: int
    file_bytes_per_item: float  # everything: codes, ids, scales, Parquet header and footer


def write_codes(path: str | Path, ids: list[str], codes: np.ndarray, model_id: str, dtype: str) -> CompressResult:
    """Quantise ``codes`` (N, code) and write them with their ids and model id (atomic)."""
    if len(ids) != len(codes):
        raise ConfigError(f"{len(ids)} ids for {len(codes)} codes")
    q = quantise(codes, dtype)
    values = np.ascontiguousarray(q.values)
    width = values.shape[1] * values.itemsize
    col = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(values), [None, pa.py_buffer(values)])
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "model_id": model_id,
        "code_size": int(codes.shape[1]),
        "dtype": dtype,
    }
    if q.offset is not None and q.scale is not None:
        meta["offset"] = q.offset.tolist()
        meta["scale"] = q.scale.tolist()
    table = pa.table({"id": pa.array(ids, pa.string()), "code": col}).replace_schema_metadata(
        {META_KEY: json.dumps(meta).encode()}
    )
    path = Path(path)
    atomic_write_table(path, table, compression="zstd")
    size = path.stat().st_size
    return CompressResult(
        str(path),
        model_id,
        len(ids),
        int(codes.shape[1]),
        dtype,
        width,
        size,
        round(size / max(len(ids), 1), 2),
    )


@dataclass
class CodeFile:
    ids: list[str]
    codes: np.ndarray  # (N, code) float32, dequantised
    model_id: str
    dtype: str


def read_codes(path: str | Path) -> CodeFile:
    """A file written by :func:`write_codes`, dequantised."""
    path = Path(path)
    if not path.is_file():
        raise MissingArtifact(f"no code file at {path}")
    try:
        table = pq.read_table(path)
        meta = json.loads((table.schema.metadata or {})[META_KEY])
    except (pa.ArrowInvalid, OSError, KeyError, ValueError):
        raise ConfigError(f"{path} is not an aepipe code file (write one with `aepipe compress`)") from None
    dtype, code_size = meta["dtype"], int(meta["code_size"])
    np_dtype = {"float32": "<f4", "float16": "<f2", "int8": "i1"}[dtype]
    col = table.column("code").combine_chunks()
    values = np.frombuffer(
        col.buffers()[1], np_dtype, count=len(col) * code_size, offset=col.offset * col.type.byte_width
    )
    q = Quantised(
        values.reshape(len(col), code_size),
        dtype,
        np.asarray(meta["offset"], np.float32) if "offset" in meta else None,
        np.asarray(meta["scale"], np.float32) if "scale" in meta else None,
    )
    return CodeFile(table.column("id").to_pylist(), dequantise(q), meta["model_id"], dtype)


def compress_run(
    cfg: PipelineConfig,
    out: str | Path,
    dtype: str = "int8",
    ids: list[str] | None = None,
    images: list[str | Path] | None = None,
) -> CompressResult:
    """The ``aepipe compress`` stage: codes of the store (all, or ``ids``), or of image files
    encoded by the run's model, quantised into one compact file."""
    layout = RunLayout.at(cfg.run_dir)
    if images is not None:
        if ids is not None:
            raise ConfigError("give --id or --image, not both")
        model = model_for(layout)
        x = read_image_files(image_model(model), list(images), cfg.corpus.images.max_pixels)
        return write_codes(out, [Path(p).name for p in images], codes_of(model, x), model.model_id, dtype)
    stored = stored_codes(layout, ids)
    return write_codes(out, stored.ids, stored.codes, stored.model_id, dtype)


def decompress_run(cfg: PipelineConfig, path: str | Path, out_dir: str | Path) -> DecodeResult:
    """The ``aepipe decompress`` stage: a compact code file -> one PNG per item, decoded by the
    model that made the codes (found in the run by its id)."""
    f = read_codes(path)
    model = model_for(RunLayout.at(cfg.run_dir), f.model_id)
    files = write_pngs(decode_codes(model, f.codes), f.ids, out_dir)
    return DecodeResult(str(out_dir), model.model_id, len(files), files, None)
