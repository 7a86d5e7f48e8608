"""Read ahead in a background thread while the consumer works (the DataLoader-worker role):
order kept, errors re-raised in the consumer, an early close stops the thread."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any


def prefetch(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """Yield ``items`` in order while a background thread produces up to ``depth`` ahead (what
    DataLoader workers do for a map-style dataset): reading and decoding the next batch overlaps the
    model's forward pass, which releases the GIL. Exceptions reach the consumer; closing the
    generator early stops the thread. ``depth`` 0: no thread."""
    if depth <= 0:
        yield from items
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((done, None))
        except BaseException as exc:  # handed to the consumer, raised there
            q.put((done, exc))

    thread = threading.Thread(target=produce, name="aepipe-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = q.get()
            if item is done:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.05)
