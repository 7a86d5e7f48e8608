"""Image files decoded in worker processes (encode.decode_workers): the same store (ids, order,
codes) and the same quarantine as decoding in the reading thread, for folder and Parquet-bytes
corpora with bad items among the good ones."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aepipe.codes.encode import encode_corpus
from aepipe.codes.store import open_store
from aepipe.corpus import Quarantine, open_corpus
from aepipe.corpus.decode import decode_in_line, decode_in_workers
from aepipe.corpus.images import chunked
from aepipe.layout import RunLayout
from tests.conftest import png_bytes

N_GOOD = 300


def _pngs(digits_x: np.ndarray) -> list[bytes]:
    return [png_bytes((digits_x[i, 0] * 255).round().astype(np.uint8)) for i in range(N_GOOD)]


def _bad_payloads() -> dict[int, bytes]:
    """Positions among the good items where a bad one sits: zero bytes, text, a truncated PNG."""
    return {7: b"", 150: b"not an image at all", 233: b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00"}


def _folder(tmp_path, digits_x):
    root = tmp_path / "folder"
    bad = _bad_payloads()
    payloads = _pngs(digits_x)
    for i in range(N_GOOD + len(bad)):
        path = root / str(i % 10) / f"img{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bad[i] if i in bad else payloads[i % N_GOOD])
    return root


def _parquet(tmp_path, digits_x):
    bad = _bad_payloads()
    payloads = _pngs(digits_x)
    images: list[bytes | None] = [bad[i] if i in bad else payloads[i % N_GOOD] for i in range(N_GOOD + len(bad))]
    images[42] = None  # missing bytes: the reader marks it bad before any decoding
    path = tmp_path / "images.parquet"
    table = pa.table(
        {
            "id": [f"r{i}" for i in range(len(images))],
            "image": pa.array(images, pa.binary()),
            "label": [str(i % 10) for i in range(len(images))],
        }
    )
    pq.write_table(table, path, row_group_size=50)
    return path


def _encode(run_copy, source, workers: int) -> tuple[pa.Table, list[dict]]:
    encode_corpus(
        run_copy.config(
            f"corpus.source={source}",
            "corpus.limit=null",
            "corpus.id_column=id",
            "encode.batch_size=32",
            "encode.rows_per_part=120",
            f"encode.decode_workers={workers}",
            "encode.decode_min_items=0",
        )
    )
    layout = RunLayout.at(run_copy.run_dir)
    store = open_store(layout.store).read(["id", "code", "label", "source"])
    return store, pq.read_table(layout.quarantine("encode")).to_pylist()


@pytest.mark.parametrize("corpus", [_folder, _parquet])
def test_worker_processes_write_the_same_store_and_quarantine(run_copy, tmp_path, digits_x, corpus):
    source = corpus(tmp_path, digits_x)
    in_line, q_in_line = _encode(run_copy, source, 0)
    parallel, q_parallel = _encode(run_copy, source, 2)
    assert parallel.column("id").to_pylist() == in_line.column("id").to_pylist()
    assert parallel.column("source").to_pylist() == in_line.column("source").to_pylist()
    assert parallel.column("label").to_pylist() == in_line.column("label").to_pylist()
    assert parallel.column("code").to_pylist() == in_line.column("code").to_pylist()  # bit for bit
    assert len(in_line) == N_GOOD - (1 if corpus is _parquet else 0)
    assert q_parallel == q_in_line and len(q_in_line) == 3 + (1 if corpus is _parquet else 0)
    reasons = {r["id"].rsplit("/", 1)[-1]: r["reason"] for r in q_parallel}
    assert all(reasons.values()) and len(set(reasons.values())) >= 2  # each bad item with its own reason


def test_workers_return_chunks_in_order_and_keep_bad_items_in_place(tmp_path, digits_x):
    from aepipe.config import CorpusConfig
    from aepipe.features.images import ImagePreprocessor

    corpus = open_corpus(CorpusConfig(source=str(_parquet(tmp_path, digits_x)), id_column="id"))
    prep = ImagePreprocessor(8, 8, 1)
    items = list(corpus.iter_raw())
    line = list(decode_in_line(chunked(iter(items), 16), prep, 10**6))
    work = list(decode_in_workers(chunked(iter(items), 16), prep, 10**6, workers=2))
    assert [[it.pos for it in c.items] for c in work] == [[it.pos for it in c.items] for c in line]
    for a, b in zip(line, work):
        assert [x if isinstance(x, str) else x.tobytes() for x in a.per_item()] == [
            x if isinstance(x, str) else x.tobytes() for x in b.per_item()
        ]
    flat = [x for c in work for x in c.per_item()]
    assert [i for i, x in enumerate(flat) if isinstance(x, str)] == [7, 42, 150, 233]
    # chunks travel as uint8 pixels; what arrives is, bit for bit, what the preprocessor gives an item
    for item, x in zip(items, flat):
        if not isinstance(x, str):
            want = prep(item.payload, 10**6)
            assert x.dtype == want.dtype == np.float32 and x.tobytes() == want.tobytes()
    # an early close cancels what is still queued and leaves the pool usable
    gen = decode_in_workers(chunked(iter(items), 16), prep, 10**6, workers=2)
    next(gen)
    gen.close()
    q = Quarantine("encode")
    assert sum(len(b) for b in corpus.iter_batches(prep, 32, q, decode_workers=2)) == N_GOOD - 1 and len(q) == 4


@pytest.mark.parametrize("workers,expected", [(2, 2), (3, 1), (0, 5)])
def test_the_model_runs_on_the_cores_the_decode_workers_leave(
    run_copy, tmp_path, digits_x, monkeypatch, workers, expected
):
    """Decode workers take cores: torch's threads beside them only oversubscribed (1M PNGs on 2
    cores, 2 torch threads ~9.2k items/s, 1 thread ~11.3k). Restored when the loop ends."""
    import torch

    import aepipe.codes.encode as enc
    from aepipe.model.saved import load_model

    monkeypatch.setattr(enc, "_usable_cores", lambda: 4)
    cfg = run_copy.config(
        f"corpus.source={_parquet(tmp_path, digits_x)}",
        "corpus.limit=null",
        "corpus.id_column=id",
        "encode.batch_size=64",
        f"encode.decode_workers={workers}",
        "encode.decode_min_items=0",
    )
    model = load_model(RunLayout.at(run_copy.run_dir).model.root)
    before = torch.get_num_threads()
    torch.set_num_threads(5)
    try:
        seen = {
            torch.get_num_threads()
            for _ in enc.encode_batches(model, open_corpus(cfg.corpus), cfg.encode, Quarantine("encode"))
        }
        assert seen == {expected}
        assert torch.get_num_threads() == 5
    finally:
        torch.set_num_threads(before)


class CrashOn:
    """An ImagePreprocessor that kills its process on one payload, as a crash in the image
    library would (picklable: it goes to the workers)."""

    def __init__(self, payload: bytes) -> None:
        from aepipe.features.images import ImagePreprocessor

        self.payload, self.prep = payload, ImagePreprocessor(8, 8, 1)

    def __call__(self, payload: bytes, max_pixels: int):
        if payload == self.payload:
            import os

            os._exit(3)
        return self.prep(payload, max_pixels)


def test_an_item_that_kills_its_worker_is_quarantined_and_the_rest_decode_in_order(tmp_path, digits_x, caplog):
    from aepipe.config import CorpusConfig
    from aepipe.corpus.decode import WORKER_DIED
    from aepipe.features.images import ImagePreprocessor

    corpus = open_corpus(CorpusConfig(source=str(_parquet(tmp_path, digits_x)), id_column="id"))
    items = list(corpus.iter_raw())
    crash = b"CRASH"
    items[100] = dataclasses.replace(items[100], payload=crash)
    expected = [
        WORKER_DIED if i == 100 else x
        for i, x in enumerate(
            x for c in decode_in_line(chunked(iter(items), 16), ImagePreprocessor(8, 8, 1), 10**6) for x in c.per_item()
        )
    ]
    with caplog.at_level("WARNING", logger="aepipe.corpus.decode"):
        work = list(decode_in_workers(chunked(iter(items), 16), CrashOn(crash), 10**6, workers=2))
    assert [it.pos for c in work for it in c.items] == [it.pos for it in items]
    got = [x for c in work for x in c.per_item()]
    assert [x if isinstance(x, str) else x.tobytes() for x in got] == [
        x if isinstance(x, str) else x.tobytes() for x in expected
    ]
    assert f"item {items[100].id} killed its decode worker process" in caplog.text
    # the pool that replaced the dead one keeps working for the next shard
    assert len(list(decode_in_workers(chunked(iter(items[:40]), 16), ImagePreprocessor(8, 8, 1), 10**6, 2))) == 3


def test_a_script_without_a_main_guard_still_encodes_everything(run_copy, tmp_path, digits_x):
    """Spawned workers run an unguarded script again and die; the run goes on decoding in line,
    says why once, and writes the same store as decoding in line."""
    import json
    import subprocess
    import sys

    source = _folder(tmp_path, digits_x)
    overrides = [
        *run_copy.overrides,
        f"run_dir={run_copy.run_dir}",
        f"corpus.source={source}",
        "corpus.limit=null",
        "encode.batch_size=32",
        "encode.rows_per_part=120",  # three shards: workers are not tried again for each
        "encode.decode_workers=2",
        "encode.decode_min_items=0",
    ]
    script = tmp_path / "encode_my_folder.py"  # no `if __name__ == "__main__":` on purpose
    script.write_text(
        "import json, sys\n"
        "from aepipe.codes.encode import encode_corpus\n"
        "from aepipe.config import build_config\n"
        f"encoded = encode_corpus(build_config(overrides=json.loads({json.dumps(json.dumps(overrides))})))\n"
        "print('encoded', encoded.n_items, encoded.n_quarantined)\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["encoded", str(N_GOOD), "3"]
    assert proc.stderr.count("decode worker processes could not start") == 1 and "__main__" in proc.stderr
    store = open_store(RunLayout.at(run_copy.run_dir).store).read(["id", "code"])
    in_line, _ = _encode(run_copy, source, 0)
    assert store.column("id").to_pylist() == in_line.column("id").to_pylist()
    assert store.column("code").to_pylist() == in_line.column("code").to_pylist()


def test_a_chunk_read_after_the_pool_broke_is_not_lost(tmp_path, digits_x):
    """The reader can hand over the next chunk after a worker has died but before its result is
    collected: submitting it to the broken pool raises, and the chunk must still be decoded (it
    was dropped once, on CI, where the timing fell that way)."""
    import time
    from concurrent.futures.process import BrokenProcessPool

    from aepipe.config import CorpusConfig
    from aepipe.corpus.decode import WORKER_DIED, decode_chunk, shared_pool
    from aepipe.features.images import ImagePreprocessor

    corpus = open_corpus(CorpusConfig(source=str(_parquet(tmp_path, digits_x)), id_column="id"))
    items = list(corpus.iter_raw())[:64]
    crash = b"CRASH"
    items[3] = dataclasses.replace(items[3], payload=crash)

    def reader():
        chunks = chunked(iter(items), 16)
        yield next(chunks)  # holds the crash item: its worker dies
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until the pool knows (a no-op job is refused)
            try:
                shared_pool(2).submit(decode_chunk, None, 0, []).result()
            except BrokenProcessPool:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the worker that decoded the crash item did not die")
        yield from chunks

    work = list(decode_in_workers(reader(), CrashOn(crash), 10**6, workers=2))
    assert [it.pos for c in work for it in c.items] == [it.pos for it in items]
    got = [x for c in work for x in c.per_item()]
    in_line = [
        x for c in decode_in_line(chunked(iter(items), 16), ImagePreprocessor(8, 8, 1), 10**6) for x in c.per_item()
    ]
    expected = [WORKER_DIED if i == 3 else x for i, x in enumerate(in_line)]
    assert [x if isinstance(x, str) else x.tobytes() for x in got] == [
        x if isinstance(x, str) else x.tobytes() for x in expected
    ]
