"""Decoding of encoded items (image file bytes) in worker processes.

Pillow's PNG / JPEG decoders hold the GIL for most of their ~90 us per small image, so a second
thread slows the reader down rather than helping it; worker processes use the other cores.
Chunks of raw items go to a process pool and come back in submission order, so ids, positions
and quarantine entries are exactly those of decoding in line; at most ``2 x workers`` chunks are
in flight, which bounds memory whatever the corpus size. A chunk comes back as one array (and the
reasons of its bad items): unpickling a thousand small arrays one by one costs the parent, which
also runs the model, more than the copy.
"""

from __future__ import annotations

import atexit
import multiprocessing
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import numpy as np

from aepipe.corpus.base import BadItem, RawItem

Decoded = tuple[list[RawItem], list[np.ndarray | str]]  # items, and per item its array or the reason it is bad


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


def decode_packed(prep: Any, max_pixels: int, payloads: list[Any]) -> tuple[np.ndarray | None, list[str]]:
    """``decode_chunk`` for the trip back from a worker: the good items' arrays stacked in order
    (None when there are none) and per item its reason, "" for a good one."""
    results = decode_chunk(prep, max_pixels, payloads)
    good = [x for x in results if not isinstance(x, str)]
    return (np.stack(good) if good else None), [x if isinstance(x, str) else "" for x in results]


def decode_in_line(chunks: Iterable[list[RawItem]], prep: Any, max_pixels: int) -> Iterator[Decoded]:
    for items in chunks:
        yield items, [_decode_one(item, prep, max_pixels) for item in items]


def _decode_one(item: RawItem, prep: Any, max_pixels: int) -> np.ndarray | str:
    if isinstance(item.payload, BadItem):
        return item.payload.reason
    return decode_chunk(prep, max_pixels, [item.payload])[0]


def decode_in_workers(chunks: Iterable[list[RawItem]], prep: Any, max_pixels: int, workers: int) -> Iterator[Decoded]:
    """``decode_in_line`` with the decoding in ``workers`` processes, results in input order.
    Items the reader already marked bad (a BadItem payload) are not sent."""
    pool = shared_pool(workers)
    pending: deque[tuple[list[RawItem], list[int], Future]] = deque()
    try:
        for items in chunks:
            send = [i for i, item in enumerate(items) if not isinstance(item.payload, BadItem)]
            pending.append(
                (items, send, pool.submit(decode_packed, prep, max_pixels, [items[i].payload for i in send]))
            )
            if len(pending) >= 2 * workers:  # bounded read-ahead
                yield _collect(*pending.popleft())
        while pending:
            yield _collect(*pending.popleft())
    finally:
        for _, _, future in pending:  # an early close (an error downstream): drop queued work
            future.cancel()


def _collect(items: list[RawItem], send: list[int], future: Future) -> Decoded:
    results: list[np.ndarray | str] = [
        item.payload.reason if isinstance(item.payload, BadItem) else "" for item in items
    ]
    stacked, reasons = future.result()
    good = iter(stacked if stacked is not None else ())
    for i, reason in zip(send, reasons):
        results[i] = reason or next(good)
    return items, results


_pools: dict[int, ProcessPoolExecutor] = {}
_pools_lock = threading.Lock()


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
