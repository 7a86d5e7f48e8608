"""Fingerprints of corpus items: what tells an update that an item is new, changed or gone.

Folder corpora: the file's size and modification time (a stat, no read). Tables and arrays:
a content hash of the payload. Recorded per item in the store (``_items.parquet``) when it is
encoded, compared with the corpus by ``aepipe update``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from aepipe.corpus.base import BadItem, Shard

FINGERPRINT_SCHEMA = pa.schema([("id", pa.string()), ("fingerprint", pa.string()), ("position", pa.int64())])


def payload_hash(payload: Any) -> str:
    h = hashlib.blake2b(digest_size=16)
    if isinstance(payload, BadItem):
        h.update(b"bad:" + payload.reason.encode())
    elif isinstance(payload, np.ndarray):
        h.update(str((payload.dtype.str, payload.shape)).encode())
        h.update(np.ascontiguousarray(payload).tobytes())
    elif isinstance(payload, (bytes, bytearray, memoryview)):
        h.update(bytes(payload))
    else:  # documents: DecodedText (text + encoding) or str
        h.update(str(getattr(payload, "text", payload)).encode("utf-8", "surrogatepass"))
    return "h:" + h.hexdigest()


def shard_fingerprints(corpus: Any, shard: Shard) -> pa.Table:
    """(id, fingerprint, position) of every item of ``shard``, bad ones included (so a file that
    stays unreadable is not retried every night)."""
    ids, fps, poss = [], [], []
    if corpus.format == "folder":
        root = Path(corpus.cfg.source)
        for pos, rel in zip(shard.positions or range(shard.start, shard.stop), shard.files):
            try:
                st = os.stat(root / rel)
                fp = f"s:{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                fp = "s:missing"
            ids.append(rel)
            fps.append(fp)
            poss.append(pos)
    elif getattr(corpus, "format", None) in ("numpy", "digits"):  # arrays: hash whole batches' rows, no RawItem each
        for pos, batch_ids, payloads in corpus.array_payloads(shard, 4096):
            prefix = str((payloads.dtype.str, payloads.shape[1:])).encode()  # as payload_hash: same fingerprints
            ids += batch_ids
            fps += ["h:" + hashlib.blake2b(prefix + row.tobytes(), digest_size=16).hexdigest() for row in payloads]
            poss += pos.tolist()
    elif corpus.format == "parquet" and hasattr(corpus, "payload_slices"):  # images: no item object per row
        for pos, batch_ids, payloads in corpus.payload_slices(shard):
            ids += batch_ids
            fps += [payload_hash(p) for p in payloads]
            poss += pos
    else:
        for raw in corpus.iter_raw(shard):
            ids.append(raw.id)
            fps.append(payload_hash(raw.payload))
            poss.append(raw.pos)
    return pa.table({"id": ids, "fingerprint": fps, "position": poss}, schema=FINGERPRINT_SCHEMA)


def first_occurrences(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Boolean mask: True at the first row of each id. Arrow's hash group-by on the string column,
    not a Python set: 10M ids cost ~0.2 GB this way, ~1 GB as Python strings."""
    n = len(ids)
    if n == 0:
        return np.zeros(0, bool)
    table = pa.table({"id": ids, "row": pa.array(np.arange(n, dtype=np.int64))})
    first = table.group_by("id").aggregate([("row", "min")]).column("row_min").to_numpy()
    keep = np.zeros(n, bool)
    keep[first] = True
    return keep


def first_per_id(table: pa.Table) -> pa.Table:
    """Keep the first row of each id (corpus order): later duplicates are quarantined when encoded."""
    return table.filter(pa.array(first_occurrences(table.column("id")), pa.bool_()))


def corpus_signature(source: str) -> str:
    """What the corpus at ``source`` holds, cheaply: (path, size, mtime) of every file under a
    folder or dataset directory, of the file itself otherwise; the name of a built-in corpus (with
    the Python version for ``python-docs``). Equal signatures: an interrupted encode may resume."""
    import sys

    h = hashlib.blake2b(digest_size=16)
    path = Path(source).expanduser()
    if not path.exists():
        h.update(f"builtin:{source}:{sys.version}".encode())
    elif path.is_dir():
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for name in sorted(filenames):
                st = os.stat(os.path.join(dirpath, name))
                rel = os.path.relpath(os.path.join(dirpath, name), path)
                h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    else:
        st = path.stat()
        h.update(f"{path.name}\0{st.st_size}\0{st.st_mtime_ns}".encode("utf-8", "surrogateescape"))
    return h.hexdigest()
