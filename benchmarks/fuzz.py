"""Fuzzed inputs: at least 1,000 mutated files through the real CLI; zero crashes, every item
encoded or quarantined with its reason.

    python -m benchmarks.fuzz --files 1000 --out benchmarks     # long form (RESULTS-fuzz.md)
    python -m benchmarks.fuzz --files 300                        # CI's form (tests/test_fuzz.py)

Three corpora are made from a seed, every file from a generator named in its kind:

- an image folder (55 % of ``--files``): valid images in every format Pillow writes, odd modes
  (16-bit, 32-bit int and float TIFF, CMYK, palette with and without transparency, LA, RGBA, 1-bit),
  animated GIFs, EXIF-rotated JPEGs, 1x1 and 1x400 images, a 2000x3000 photo, wrong extensions both
  ways, text named .png, empty files, garbage, headers only, a PNG header claiming 100,000 x 100,000
  pixels, bit flips (1, 16, 256) and truncation of valid files, unknown extensions;
- a document folder (the rest, less the tables): valid UTF-8, Latin-1, UTF-16 with a BOM, CRLF,
  invalid UTF-8, NUL bytes, 10 MB single lines, empty and whitespace-only files, binary garbage,
  truncated multi-byte characters, bit flips, punctuation only, one 100,000-character word, unknown
  extensions; the texts come from the Python standard library's docstrings (the shipped corpus);
- tables, each a corpus of its own, encoded into the document run or the image run: Parquet with
  null ids, duplicate ids, null texts, an integer text column, an integer id column, a binary text
  column with invalid UTF-8, zero rows, a truncated file; CSV with ragged rows, NUL bytes, invalid
  UTF-8, duplicate and empty ids; JSONL with invalid JSON, non-objects, numbers as text, missing
  fields; image Parquet with garbage bytes, nulls, a string column, duplicate ids.

The folders run ``aepipe run --no-prefect`` (a small model, two epochs); each table runs
``aepipe encode --corpus TABLE`` on the run of its kind. Checks: the command exits 0 (a table the
reader cannot use at all — zero rows, a truncated file — may instead be refused with one 'aepipe: error:' line
and exit 2, never a traceback); the store's ids are unique; store + quarantine account for every
item exactly once; every quarantine entry has a reason; kinds that are valid images or documents
are encoded and kinds that cannot be are quarantined.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import random
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

ENCODE, QUARANTINE, EITHER = "encoded", "quarantined", "either"

SMALL_MODEL = [
    "model.n_layers=1",
    "model.nodes_per_layer=[32]",
    "model.code_size=4",
    "training.max_epochs=2",
    "training.min_steps=1",
    "training.knn_target=null",
    "training.batch_size=64",
    "index.n_eval_queries=20",
    "cluster.n_clusters=3",
]


@dataclass
class Case:
    """One fuzzed file (or table row): what made it and what must become of it."""

    id: str
    kind: str
    expect: str  # encoded | quarantined | either


@dataclass
class Outcome:
    corpus: str
    command: str
    exit_code: int
    cases: int
    encoded: int
    quarantined: int
    crashed: bool
    problems: list[str] = field(default_factory=list)
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)


# -- images ------------------------------------------------------------------------------------


def _picture(rng: np.random.Generator, h: int = 28, w: int = 28, channels: int = 1) -> np.ndarray:
    """Random rectangles on a dark background, uint8 (h, w) or (h, w, channels)."""
    img = np.zeros((h, w, channels), np.uint8)
    for _ in range(3):
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        y1, x1 = y0 + rng.integers(1, max(2, h // 2)), x0 + rng.integers(1, max(2, w // 2))
        img[y0:y1, x0:x1] = rng.integers(60, 256, channels)
    return img[..., 0] if channels == 1 else img


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _valid(rng: np.random.Generator) -> tuple[bytes, str]:
    fmt, ext = [("PNG", ".png"), ("JPEG", ".jpg"), ("BMP", ".bmp"), ("GIF", ".gif"), ("TIFF", ".tif")][
        int(rng.integers(5))
    ]
    return _save(Image.fromarray(_picture(rng, channels=3 if fmt != "GIF" else 1)), fmt), ext


def _exif_rotated(rng: np.random.Generator) -> tuple[bytes, str]:
    img = Image.fromarray(_picture(rng, 20, 36, 3))
    exif = Image.Exif()
    exif[0x0112] = int(rng.choice([3, 6, 8]))  # Orientation: 180, 90 CW, 90 CCW
    return _save(img, "JPEG", exif=exif.tobytes()), ".jpg"


def _animated_gif(rng: np.random.Generator) -> tuple[bytes, str]:
    frames = [Image.fromarray(_picture(rng)) for _ in range(3)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0), ".gif"


def _huge_header(rng: np.random.Generator) -> tuple[bytes, str]:
    """A PNG whose header (with a correct CRC) claims 100,000 x 100,000 pixels, and no image data."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    idat = zlib.compress(b"\0" * 1000)
    data = struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    end = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + chunk + data + end, ".png"


def _flip(data: bytes, rng: np.random.Generator, n: int) -> bytes:
    buf = bytearray(data)
    for pos in rng.integers(0, len(buf), n):
        buf[pos] ^= 1 << int(rng.integers(8))
    return bytes(buf)


def _cut(data: bytes, rng: np.random.Generator) -> bytes:
    return data[: int(rng.integers(1, max(2, len(data) - 1)))]


ImageMaker = Callable[[np.random.Generator], tuple[bytes, str]]
IMAGE_KINDS: dict[str, tuple[str, ImageMaker]] = {
    "valid": (ENCODE, _valid),
    "png-16bit": (ENCODE, lambda r: (_save(Image.fromarray(_picture(r).astype(np.uint16) * 257), "PNG"), ".png")),
    "tiff-int32": (ENCODE, lambda r: (_save(Image.fromarray(_picture(r).astype(np.int32) * 1000), "TIFF"), ".tif")),
    "tiff-float": (ENCODE, lambda r: (_save(Image.fromarray(_picture(r).astype(np.float32) / 255), "TIFF"), ".tiff")),
    "jpeg-cmyk": (ENCODE, lambda r: (_save(Image.fromarray(_picture(r, channels=3)).convert("CMYK"), "JPEG"), ".jpg")),
    "png-palette": (ENCODE, lambda r: (_save(Image.fromarray(_picture(r, channels=3)).convert("P"), "PNG"), ".png")),
    "png-palette-transparent": (
        ENCODE,
        lambda r: (_save(Image.fromarray(_picture(r, channels=3)).convert("P"), "PNG", transparency=0), ".png"),
    ),
    "png-la": (ENCODE, lambda r: (_save(Image.fromarray(_picture(r, channels=2), "LA"), "PNG"), ".png")),
    "png-rgba": (ENCODE, lambda r: (_save(Image.fromarray(_picture(r, channels=4), "RGBA"), "PNG"), ".png")),
    "png-1bit": (ENCODE, lambda r: (_save(Image.fromarray(_picture(r)).convert("1"), "PNG"), ".png")),
    "webp": (ENCODE, lambda r: (_save(Image.fromarray(_picture(r, channels=3)), "WEBP"), ".webp")),
    "gif-animated": (ENCODE, _animated_gif),
    "jpeg-exif-rotated": (ENCODE, _exif_rotated),
    "png-1x1": (ENCODE, lambda r: (_save(Image.fromarray(_picture(r, 1, 1)), "PNG"), ".png")),
    "png-1x400": (ENCODE, lambda r: (_save(Image.fromarray(_picture(r, 1, 400)), "PNG"), ".png")),
    "png-named-jpg": (ENCODE, lambda r: (_save(Image.fromarray(_picture(r)), "PNG"), ".jpg")),
    "jpeg-named-png": (ENCODE, lambda r: (_save(Image.fromarray(_picture(r, channels=3)), "JPEG"), ".PNG")),
    "text-named-png": (QUARANTINE, lambda r: (b"this is not an image\n" * int(r.integers(1, 50)), ".png")),
    "empty": (QUARANTINE, lambda r: (b"", ".png")),
    "garbage": (QUARANTINE, lambda r: (r.integers(0, 256, int(r.integers(1, 5000)), np.uint8).tobytes(), ".jpg")),
    "png-header-only": (QUARANTINE, lambda r: (_save(Image.fromarray(_picture(r)), "PNG")[:16], ".png")),
    "png-claims-100000x100000": (QUARANTINE, _huge_header),
    "unknown-extension": (QUARANTINE, lambda r: (_save(Image.fromarray(_picture(r)), "PNG"), ".xyz")),
    "bitflip-1": (EITHER, lambda r: (_flip(_valid(r)[0], r, 1), ".png")),
    "bitflip-16": (EITHER, lambda r: (_flip(_valid(r)[0], r, 16), ".jpg")),
    "bitflip-256": (EITHER, lambda r: (_flip(_valid(r)[0], r, 256), ".bmp")),
    "truncated": (EITHER, lambda r: (_cut(_valid(r)[0], r), ".gif")),
}
# every 7th image is valid whatever the draw, so that the model has something to learn from
LARGE_PHOTO = "photo-2000x3000"


def make_images(root: Path, n: int, rng: np.random.Generator) -> list[Case]:
    kinds = list(IMAGE_KINDS)
    cases = []
    for i in range(n):
        kind = "valid" if i % 7 == 0 else kinds[int(rng.integers(len(kinds)))]
        expect, maker = IMAGE_KINDS[kind]
        data, ext = maker(rng)
        rel = f"c{i % 3}/{i:05d}-{kind}{ext}"
        _write(root / rel, data)
        cases.append(Case(rel, kind, expect))
    big = np.asarray(Image.fromarray(_picture(rng, 30, 20, 3)).resize((2000, 3000)))
    rel = f"c0/{n:05d}-{LARGE_PHOTO}.jpg"
    _write(root / rel, _save(Image.fromarray(big), "JPEG", quality=80))
    cases.append(Case(rel, LARGE_PHOTO, ENCODE))
    return cases


# -- documents -----------------------------------------------------------------------------------


def _texts() -> list[str]:
    from aepipe.corpus.documents import python_docs_records

    return [str(text.text) for _, text, _, _ in python_docs_records() if hasattr(text, "text")]


TextMaker = Callable[[str, np.random.Generator], tuple[bytes, str]]
TEXT_KINDS: dict[str, tuple[str, TextMaker]] = {
    "valid-utf8": (ENCODE, lambda t, r: (t.encode(), ".txt")),
    "latin1": (ENCODE, lambda t, r: ((t + " café naïve").encode("latin-1", "replace"), ".txt")),
    "utf16-bom": (ENCODE, lambda t, r: (t.encode("utf-16"), ".txt")),
    "crlf": (ENCODE, lambda t, r: (t.replace("\n", "\r\n").encode(), ".md")),
    "invalid-utf8": (EITHER, lambda t, r: (_insert(t.encode(), b"\xff\xfe\xc3(", r), ".txt")),
    "nul-bytes": (EITHER, lambda t, r: (_insert(t.encode(), b"\0" * int(r.integers(1, 20)), r), ".txt")),
    "ten-mb-line": (QUARANTINE, lambda t, r: ((t.replace("\n", " ") + " ") * (10 * 2**20 // max(1, len(t))), ".txt")),
    "empty": (QUARANTINE, lambda t, r: (b"", ".txt")),
    "whitespace-only": (QUARANTINE, lambda t, r: (b" \n\t\r\n" * int(r.integers(1, 100)), ".txt")),
    "binary-garbage": (EITHER, lambda t, r: (r.integers(0, 256, int(r.integers(1, 4000)), np.uint8).tobytes(), ".txt")),
    "truncated-multibyte": (EITHER, lambda t, r: ((t + " Zürich €").encode()[:-1], ".txt")),
    "bitflip": (EITHER, lambda t, r: (_flip(t.encode(), r, 8), ".txt")),
    "punctuation-only": (QUARANTINE, lambda t, r: (b"!?.,;:-" * int(r.integers(1, 50)), ".txt")),
    "one-huge-word": (EITHER, lambda t, r: (b"x" * 100_000, ".txt")),
    "unknown-extension": (QUARANTINE, lambda t, r: (t.encode(), ".pdf")),
}


def _insert(data: bytes, junk: bytes, rng: np.random.Generator) -> bytes:
    at = int(rng.integers(0, len(data) + 1))
    return data[:at] + junk + data[at:]


def make_documents(root: Path, n: int, rng: np.random.Generator, texts: list[str]) -> list[Case]:
    kinds = list(TEXT_KINDS)
    cases = []
    big = 0
    for i in range(n):
        kind = "valid-utf8" if i % 4 == 0 else kinds[int(rng.integers(len(kinds)))]
        if kind == "ten-mb-line":  # at most three 10 MB files however many are asked for
            big += 1
            kind = kind if big <= 3 else "valid-utf8"
        expect, maker = TEXT_KINDS[kind]
        data, ext = maker(texts[i % len(texts)], rng)
        rel = f"t{i % 3}/{i:05d}-{kind}{ext}"
        _write(root / rel, data if isinstance(data, bytes) else data.encode())
        cases.append(Case(rel, kind, expect))
    return cases


# -- tables ----------------------------------------------------------------------------------------


@dataclass
class Table:
    name: str  # file name; its suffix picks the reader
    corpus: str  # which run encodes it: "documents" or "images"
    cases: list[Case]  # one per row, in order (ids may repeat)
    refusable: bool = False  # the whole table is unusable: one line and exit 2 is the right answer


def _doc_rows(texts: list[str], rng: np.random.Generator, n: int) -> list[tuple[str | None, object, str, str]]:
    """(id, text, kind, expect) rows with nulls, duplicates and empty texts mixed in."""
    rows: list[tuple[str | None, object, str, str]] = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.1:
            rows.append((None, texts[i % len(texts)], "null-id", QUARANTINE))
        elif roll < 0.2 and rows and rows[0][0] is not None:
            rows.append((rows[0][0], texts[i % len(texts)], "duplicate-id", EITHER))
        elif roll < 0.3:
            rows.append((f"d{i}", None, "null-text", QUARANTINE))
        elif roll < 0.35:
            rows.append((f"d{i}", "", "empty-text", QUARANTINE))
        else:
            rows.append((f"d{i}", texts[i % len(texts)], "valid", ENCODE))
    return rows


def _cases(rows) -> list[Case]:
    """Cases of Parquet rows: a row without an id is named by its position, as the reader does."""
    return [Case(f"row-{p}" if r[0] is None else str(r[0]), r[2], r[3]) for p, r in enumerate(rows)]


def make_tables(root: Path, rng: np.random.Generator, texts: list[str], rows: int) -> list[Table]:
    tables: list[Table] = []

    def parquet(name: str, table: pa.Table, cases: list[Case], corpus: str = "documents", refusable=False) -> None:
        pq.write_table(table, root / name)
        tables.append(Table(name, corpus, cases, refusable))

    r = _doc_rows(texts, rng, rows)
    parquet("docs-mixed.parquet", pa.table({"id": [x[0] for x in r], "text": [x[1] for x in r]}), _cases(r))
    ints = [(f"n{i}", "integer-text", QUARANTINE) for i in range(rows)]
    parquet(
        "docs-text-int.parquet",
        pa.table({"id": [x[0] for x in ints], "text": list(range(rows))}),
        [Case(i, k, e) for i, k, e in ints],
        refusable=True,  # nothing in it is a text
    )
    parquet(
        "docs-id-int.parquet",
        pa.table({"id": list(range(rows)), "text": [texts[i % len(texts)] for i in range(rows)]}),
        [Case(str(i), "integer-id", ENCODE) for i in range(rows)],
    )
    raw = [_insert(texts[i % len(texts)].encode(), b"\xff\xfe", rng) for i in range(rows)]
    parquet(
        "docs-text-binary.parquet",
        pa.table({"id": [f"b{i}" for i in range(rows)], "text": pa.array(raw, pa.binary())}),
        [Case(f"b{i}", "binary-text-invalid-utf8", EITHER) for i in range(rows)],
    )
    parquet(
        "docs-labels-mixed.parquet",
        pa.table(
            {
                "id": [f"l{i}" for i in range(rows)],
                "text": [texts[i % len(texts)] for i in range(rows)],
                "label": [None if i % 3 == 0 else str(i % 5) for i in range(rows)],
            }
        ),
        [Case(f"l{i}", "null-or-string-label", ENCODE) for i in range(rows)],
    )
    parquet(
        "docs-zero-rows.parquet",
        pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}),
        [],
        refusable=True,
    )
    good = pa.table({"id": [f"t{i}" for i in range(rows)], "text": [texts[i % len(texts)] for i in range(rows)]})
    pq.write_table(good, root / "full.tmp")
    data = (root / "full.tmp").read_bytes()
    (root / "full.tmp").unlink()
    _write(root / "docs-truncated.parquet", data[: len(data) // 2])
    tables.append(Table("docs-truncated.parquet", "documents", [], refusable=True))

    # CSV: ragged rows, NUL bytes, duplicate and empty ids, invalid UTF-8 in one cell
    r = _doc_rows(texts, rng, rows)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["id", "text"])
    cases = []
    for i, (rid, text, kind, expect) in enumerate(r):
        if i % 9 == 5:
            w.writerow([f"c{i}", texts[i % len(texts)], "extra", "cells"])
            cases.append(Case(f"c{i}", "ragged-row", EITHER))
        elif i % 9 == 7:
            w.writerow([f"c{i}", "nul\0in the " + texts[i % len(texts)]])
            cases.append(Case(f"c{i}", "nul-in-cell", EITHER))
        else:
            w.writerow(["" if rid is None else rid, "" if text is None else text])
            if rid is None:  # the reader names a row without an id by its (1-based) row number
                cases.append(Case(f"row-{i + 1}", "empty-id", EITHER))
            else:
                cases.append(Case(rid, kind, expect))
    data = buf.getvalue().encode() + b"zz9,caf\xe9 latin-1 in a UTF-8 file\n"
    cases.append(Case("zz9", "invalid-utf8-cell", EITHER))
    _write(root / "docs.csv", data)
    tables.append(Table("docs.csv", "documents", cases))

    # JSONL: invalid JSON, non-objects, numbers as text, missing fields
    lines, cases = [], []
    for i in range(rows):
        roll = i % 6
        if roll == 1:
            lines.append(b'{"id": "j%d", "text": ' % i)
            cases.append(Case(f"line-{i + 1}", "invalid-json", QUARANTINE))
        elif roll == 2:
            lines.append(b"[1, 2, 3]")
            cases.append(Case(f"line-{i + 1}", "not-an-object", QUARANTINE))
        elif roll == 3:
            lines.append(json.dumps({"id": f"j{i}", "text": 12345}).encode())
            cases.append(Case(f"j{i}", "number-as-text", QUARANTINE))
        elif roll == 4:
            lines.append(json.dumps({"id": f"j{i}"}).encode())
            cases.append(Case(f"j{i}", "missing-text", QUARANTINE))
        else:
            lines.append(json.dumps({"id": f"j{i}", "text": texts[i % len(texts)]}).encode())
            cases.append(Case(f"j{i}", "valid", ENCODE))
    _write(root / "docs.jsonl", b"\n".join(lines) + b"\n")
    tables.append(Table("docs.jsonl", "documents", cases))

    # image Parquet: garbage bytes, nulls, duplicate ids; a string column instead of bytes
    images, cases = [], []
    for i in range(rows):
        roll = i % 5
        if roll == 1:
            images.append(rng.integers(0, 256, 100, np.uint8).tobytes())
            cases.append(Case(f"i{i}", "garbage-bytes", QUARANTINE))
        elif roll == 2:
            images.append(None)
            cases.append(Case(f"i{i}", "null-image", QUARANTINE))
        else:
            images.append(_save(Image.fromarray(_picture(rng)), "PNG"))
            cases.append(Case(f"i{i}", "valid", ENCODE))
    ids = [c.id for c in cases]
    ids[-1] = ids[0]  # a duplicate id: the later row is quarantined
    cases[-1] = Case(ids[0], "duplicate-id", QUARANTINE)  # the first row (i0) is a valid image
    parquet("images-mixed.parquet", pa.table({"id": ids, "image": pa.array(images, pa.binary())}), cases, "images")
    parquet(
        "images-string-column.parquet",
        pa.table({"id": [f"s{i}" for i in range(rows)], "image": [f"not bytes {i}" for i in range(rows)]}),
        [Case(f"s{i}", "string-instead-of-bytes", QUARANTINE) for i in range(rows)],
        "images",
        refusable=True,
    )
    return tables


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


# -- running and checking ------------------------------------------------------------------------


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "aepipe.cli", *args], capture_output=True, text=True, env=_env(), timeout=1800
    )


def check(
    corpus: str, command: str, proc: subprocess.CompletedProcess, run: Path, cases: list[Case], refusable: bool
) -> Outcome:
    """Did every case end where it must, and nothing crash?"""
    crashed = "Traceback" in proc.stderr or proc.returncode not in (0, 2)
    out = Outcome(corpus, command, proc.returncode, len(cases), 0, 0, crashed)
    if crashed:
        out.problems.append(f"crashed (exit {proc.returncode}): {proc.stderr.strip()[-600:]}")
        return out
    if proc.returncode == 2:
        lines = [ln for ln in proc.stderr.strip().splitlines() if "error:" in ln]
        if not refusable:
            out.problems.append(f"refused a usable corpus: {proc.stderr.strip()[-300:]}")
        elif len(lines) != 1:
            out.problems.append(f"refusal is not one 'error:' line: {proc.stderr.strip()[-300:]}")
        out.reasons = {lines[0][:120] if lines else proc.stderr.strip()[:120]: 1}
        return out
    from aepipe.codes.store import open_store
    from aepipe.layout import RunLayout

    layout = RunLayout.at(run)
    stored = open_store(layout.store).read(["id"]).column("id").to_pylist()
    quarantine = pq.read_table(layout.quarantine("encode")).to_pylist()
    out.encoded, out.quarantined = len(stored), len(quarantine)
    if len(stored) != len(set(stored)):
        out.problems.append("duplicate ids in the store")
    if len(stored) + len(quarantine) != len(cases):
        out.problems.append(f"{len(stored)} encoded + {len(quarantine)} quarantined != {len(cases)} items")
    if any(not q["reason"] for q in quarantine):
        out.problems.append("a quarantine entry without a reason")
    out.reasons = dict(Counter(_reason_class(q["reason"]) for q in quarantine).most_common())
    # where each case ended. Rows sharing an id (duplicates) are checked together: one of them at
    # most is encoded and all are accounted for; which one depends on which rows are usable.
    ended: dict[str, list[str]] = defaultdict(list)
    for i in stored:
        ended[i].append(ENCODE)
    for q in quarantine:
        ended[q["id"]].append(QUARANTINE)
    shared = {i for i, n in Counter(c.id for c in cases).items() if n > 1}
    by_kind: dict[str, Counter] = defaultdict(Counter)
    for case in cases:
        fates = ended.get(case.id, [])
        fate = fates.pop(0) if fates else "missing"
        by_kind["rows sharing an id" if case.id in shared else case.kind][fate] += 1
        if fate == "missing":
            out.problems.append(f"{case.id} ({case.kind}) is neither encoded nor quarantined")
        elif case.expect != EITHER and fate != case.expect and case.id not in shared:
            out.problems.append(f"{case.id} ({case.kind}) was {fate}, expected {case.expect}")
    out.by_kind = {k: dict(v) for k, v in sorted(by_kind.items())}
    return out


def _reason_class(reason: str) -> str:
    """A reason without its numbers and names, so that the table counts kinds of reasons."""
    head = reason.split(":")[0] if ":" in reason[:60] else reason
    return "".join("N" if ch.isdigit() else ch for ch in head)[:90]


def fuzz(workdir: Path, files: int, seed: int, table_rows: int = 40) -> tuple[list[Outcome], int]:
    rng = np.random.default_rng(seed)
    random.seed(seed)
    texts = [t for t in _texts() if len(t) > 200]
    n_tables_files = 12
    n_images = int(files * 0.55)
    n_docs = max(files - n_images - n_tables_files, 20)
    img_cases = make_images(workdir / "images", n_images, rng)
    doc_cases = make_documents(workdir / "documents", n_docs, rng, texts)
    (workdir / "tables").mkdir()
    tables = make_tables(workdir / "tables", rng, texts, table_rows)
    n_files = len(img_cases) + len(doc_cases) + len(tables)

    outcomes = []
    runs = {"images": workdir / "run-images", "documents": workdir / "run-documents"}
    for corpus, cases, extra in (
        ("images", img_cases, []),
        ("documents", doc_cases, ["--set", "corpus.kind=documents", "--set", "model.nodes_per_layer=[64]"]),
    ):
        source = workdir / corpus
        args = ["run", "--no-prefect", "--corpus", str(source), "--run-dir", str(runs[corpus]), *extra]
        args += [a for o in SMALL_MODEL for a in ("--set", o)]
        proc = _cli(*args)
        outcomes.append(check(f"{corpus} folder ({len(cases)} files)", "aepipe run", proc, runs[corpus], cases, False))
    for t in tables:
        proc = _cli("encode", "--run-dir", str(runs[t.corpus]), "--corpus", str(workdir / "tables" / t.name))
        outcomes.append(
            check(f"{t.name} ({len(t.cases)} rows)", "aepipe encode", proc, runs[t.corpus], t.cases, t.refusable)
        )
    return outcomes, n_files


def table(outcomes: list[Outcome]) -> str:
    lines = [
        "| corpus | command | items | encoded | quarantined | crashed | lost | exit |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for o in outcomes:
        lost = sum(1 for p in o.problems if "neither encoded nor quarantined" in p)
        lines.append(
            f"| {o.corpus} | {o.command} | {o.cases} | {o.encoded} | {o.quarantined} | {int(o.crashed)} | {lost} | {o.exit_code} |"
        )
    return "\n".join(lines)


def kinds_table(outcomes: list[Outcome]) -> str:
    total: dict[str, Counter] = defaultdict(Counter)
    for o in outcomes:
        for kind, fates in o.by_kind.items():
            total[kind].update(fates)
    lines = ["| kind | encoded | quarantined |", "|---|---:|---:|"]
    lines += [f"| {k} | {v.get(ENCODE, 0)} | {v.get(QUARANTINE, 0)} |" for k, v in sorted(total.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=1000, help="mutated files in all (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write fuzz.json and RESULTS-fuzz.md here")
    args = p.parse_args(argv)
    if args.files < 100:
        p.error("--files must be at least 100 (the folders need valid items to train on)")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="aepipe-fuzz-") as tmp:
        outcomes, n_files = fuzz(Path(tmp), args.files, args.seed)
    seconds = time.perf_counter() - t0
    text = f"{table(outcomes)}\n\nWhere each kind of item ended:\n\n{kinds_table(outcomes)}"
    print(text)
    for o in outcomes:
        for problem in o.problems:
            print(f"PROBLEM {o.corpus}: {problem}", file=sys.stderr)
    if args.out:
        out = Path(args.out)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        (out / "fuzz.json").write_text(
            json.dumps({"files": n_files, "outcomes": [asdict(o) for o in outcomes]}, indent=1)
        )
        reasons: Counter = Counter()
        for o in outcomes:
            reasons.update(o.reasons)
        reason_lines = "\n".join(f"- {n} × {r}" for r, n in reasons.most_common(25))
        cmd = " ".join(["python -m benchmarks.fuzz", *(argv if argv is not None else sys.argv[1:])])
        (out / "RESULTS-fuzz.md").write_text(
            f"# Fuzzed inputs\n\n`{cmd}` ({seconds:.0f} s; {n_files} files)\n\n{text}\n\n"
            f"Quarantine reasons (numbers replaced by N), most common first:\n\n{reason_lines}\n\n"
            f"Machine: {platform.node()}, {os.cpu_count()} CPUs; commit {commit}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n"
        )
    return 0 if all(not o.problems for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
