"""Decoding of encoded items (image file bytes) in worker processes.

Pillow's PNG / JPEG decoders hold the GIL for most of their ~90 us per small image, so a second
thread slows the reader down rather than helping it; worker processes use the other cores.
Chunks of raw items go to a process pool and come back in submission order, so ids, positions
and quarantine entries are exactly those of decoding in line; at most ``2 x workers`` chunks are
in flight, which bounds memory whatever the corpus size. A chunk comes back as one array of uint8
pixels (and the reasons of its bad items): unpickling a thousand small arrays one by one, or four
times the bytes as float32, costs the parent, which also runs the model, more than it saves.

When a worker dies the run goes on. If new workers cannot even start (most often a script that
calls aepipe without ``if __name__ == "__main__":``, which every spawned worker runs again), the
rest is decoded in line, with a warning that says why. Otherwise the chunk is decoded again item
by item in new workers: an item that kills its worker (a crash in the image library) is
quarantined with that reason, and the rest carry on, in order.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

from aepipe.corpus.base import BadItem, RawItem
from aepipe.features.images import stack_pixels, to_unit

log = logging.getLogger(__name__)

WORKER_DIED = "decoding killed its worker process (a crash in the image library)"
MAIN_GUARD_HINT = (
    "decode worker processes could not start; decoding in this process instead (slower). A script "
    'that calls aepipe needs its top-level code under `if __name__ == "__main__":` for workers '
    "(each spawned worker runs the script again), or set encode.decode_workers=0"
)

Packed = tuple[np.ndarray | None, list[str]]  # the good items' arrays stacked, and per item its reason ("" if good)
Pending = tuple[list[RawItem], list[int], Future]  # a chunk, the positions sent to a worker, their Packed result


@dataclass
class Decoded:
    """A chunk of items decoded: per item the reason it is bad ("" for a good one), and the good
    items' (C, H, W) float32 arrays stacked in order (None when there are none)."""

    items: list[RawItem]
    reasons: list[str]
    x: np.ndarray | None

    @classmethod
    def from_per_item(cls, items: list[RawItem], results: list[np.ndarray | str]) -> Decoded:
        """From per item its array or its reason (the inverse of ``per_item``)."""
        good = [x for x in results if not isinstance(x, str)]
        return cls(items, [x if isinstance(x, str) else "" for x in results], np.stack(good) if good else None)

    def per_item(self) -> list[np.ndarray | str]:
        """Per item its array or its reason."""
        good = iter(self.x if self.x is not None else ())
        return [reason or next(good) for reason in self.reasons]


def decode_chunk(prep: Any, max_pixels: int, payloads: list[Any]) -> list[np.ndarray | str]:
    """Each payload through ``prep`` (an ImagePreprocessor): its (C, H, W) array, or the reason
    (BadItem) as a string. Runs in a worker process: only picklable values in and out."""
    out: list[np.ndarray | str] = []
    for payload in payloads:
        try:
            out.append(prep(payload, max_pixels))
        except BadItem as bad:
            out.append(bad.reason)
    return out


def decode_packed(prep: Any, max_pixels: int, payloads: list[Any]) -> Packed:
    """``decode_chunk`` packed for the trip back from a worker: the good items' arrays stacked in
    order, as uint8 pixels when every good payload was image bytes (``to_unit`` makes them what
    ``prep`` gives; ``stack_pixels`` reads them out of Pillow in one go), else float32; and per
    item its reason, "" for a good one."""
    images: list[Any] = []  # Pillow images for bytes payloads, float32 arrays for the others
    reasons: list[str] = []
    for payload in payloads:
        try:
            if isinstance(payload, (bytes, bytearray, memoryview)) and hasattr(prep, "fitted"):
                images.append(prep.fitted(payload, max_pixels))
            else:
                images.append(prep(payload, max_pixels))
            reasons.append("")
        except BadItem as bad:
            reasons.append(bad.reason)
    if not images:
        return None, reasons
    if not any(isinstance(x, np.ndarray) for x in images):
        return stack_pixels(images, prep.channels), reasons
    # bytes and arrays in one chunk: all as float32
    unit = [x if isinstance(x, np.ndarray) else to_unit(stack_pixels([x], prep.channels)[0]) for x in images]
    return np.stack(unit), reasons


def decode_in_line(chunks: Iterable[list[RawItem]], prep: Any, max_pixels: int) -> Iterator[Decoded]:
    for items in chunks:
        send = _to_send(items)
        yield _unpack(items, send, decode_packed(prep, max_pixels, [items[i].payload for i in send]))


def _to_send(items: list[RawItem]) -> list[int]:
    """Positions in the chunk of the items to decode (the reader marked the others bad)."""
    return [i for i, item in enumerate(items) if not isinstance(item.payload, BadItem)]


def _unpack(items: list[RawItem], send: list[int], packed: Packed) -> Decoded:
    stacked, sent_reasons = packed
    reasons = [item.payload.reason if isinstance(item.payload, BadItem) else "" for item in items]
    for i, reason in zip(send, sent_reasons):
        reasons[i] = reason
    x = None if stacked is None else to_unit(stacked) if stacked.dtype == np.uint8 else stacked
    return Decoded(items, reasons, x)


def decode_in_workers(chunks: Iterable[list[RawItem]], prep: Any, max_pixels: int, workers: int) -> Iterator[Decoded]:
    """``decode_in_line`` with the decoding in ``workers`` processes, results in input order.
    Items the reader already marked bad (a BadItem payload) are not sent. A worker that dies is
    survived (see the module docstring)."""
    if _no_workers.is_set():  # they could not start earlier in this process: don't respawn for each shard
        yield from decode_in_line(chunks, prep, max_pixels)
        return
    chunks = iter(chunks)
    pool: ProcessPoolExecutor | None = shared_pool(workers)
    pending: deque[Pending] = deque()
    again: deque[list[RawItem]] = deque()  # chunks whose work was lost with a dead worker, in order
    try:
        while pool is not None:
            try:
                while len(pending) < 2 * workers:  # bounded read-ahead: at most 2 x workers chunks in flight
                    if not again:
                        items = next(chunks, None)
                        if items is None:
                            break
                        again.append(items)  # held until submitted: submitting to a broken pool raises
                    pending.append(_submit(pool, again[0], prep, max_pixels))
                    again.popleft()
                if not pending:
                    return
                result = _collect(*pending[0])
                pending.popleft()
            except BrokenProcessPool:
                again = deque([items for items, _, _ in pending] + list(again))
                pending.clear()
                pool = _new_pool(workers, pool)
                if pool is None:
                    break
                log.warning("a decode worker process died; decoding its chunk again, item by item")
                result, pool = _one_by_one(again.popleft(), pool, workers, prep, max_pixels)
            yield result
        log.warning(MAIN_GUARD_HINT)
        yield from decode_in_line(chain(again, chunks), prep, max_pixels)
    finally:
        for _, _, future in pending:  # an early close (an error downstream): drop queued work
            future.cancel()


def _submit(pool: ProcessPoolExecutor, items: list[RawItem], prep: Any, max_pixels: int) -> Pending:
    send = _to_send(items)
    return items, send, pool.submit(decode_packed, prep, max_pixels, [items[i].payload for i in send])


def _one_by_one(
    items: list[RawItem], pool: ProcessPoolExecutor, workers: int, prep: Any, max_pixels: int
) -> tuple[Decoded, ProcessPoolExecutor | None]:
    """A chunk whose worker died, each item in a call of its own: one that kills the worker again
    gets WORKER_DIED as its reason, and new workers take over (None: none could start; the rest
    of the chunk is then decoded in line)."""
    results: list[np.ndarray | str] = []
    current: ProcessPoolExecutor | None = pool
    for item in items:
        if isinstance(item.payload, BadItem):
            results.append(item.payload.reason)
            continue
        if current is None:  # no workers could start: in this process
            results.append(decode_chunk(prep, max_pixels, [item.payload])[0])
            continue
        try:
            results.append(current.submit(decode_chunk, prep, max_pixels, [item.payload]).result()[0])
        except BrokenProcessPool:
            log.warning("item %s killed its decode worker process; quarantined", item.id)
            results.append(WORKER_DIED)
            current = _new_pool(workers, current)
    return Decoded.from_per_item(items, results), current


def _new_pool(workers: int, broken: ProcessPoolExecutor) -> ProcessPoolExecutor | None:
    """A fresh pool in place of ``broken``, or None when its workers cannot start at all."""
    with _pools_lock:
        if _pools.get(workers) is broken:
            del _pools[workers]
    broken.shutdown(wait=False, cancel_futures=True)
    pool = shared_pool(workers)
    try:
        pool.submit(decode_chunk, None, 0, []).result()  # a no-op: does a worker come up?
    except BrokenProcessPool:
        with _pools_lock:
            _pools.pop(workers, None)
        pool.shutdown(wait=False, cancel_futures=True)
        _no_workers.set()
        return None
    return pool


def _collect(items: list[RawItem], send: list[int], future: Future) -> Decoded:
    return _unpack(items, send, future.result())


_pools: dict[int, ProcessPoolExecutor] = {}
_pools_lock = threading.Lock()
_no_workers = threading.Event()  # set once workers could not start in this process


def shared_pool(workers: int) -> ProcessPoolExecutor:
    """One pool of ``workers`` processes per process, started on first use and kept for the next
    shards (starting workers costs about a second); spawned, not forked: the parent runs torch
    and reader threads, whose locks a fork would copy mid-use."""
    with _pools_lock:
        pool = _pools.get(workers)
        if pool is None:
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            _pools[workers] = pool
        return pool


@atexit.register
def shutdown_pools(wait: bool = False) -> None:
    """Stop the worker processes (at exit; a benchmark waits for them, to count their peak RSS)."""
    with _pools_lock:
        for pool in _pools.values():
            pool.shutdown(wait=wait, cancel_futures=True)
        _pools.clear()
