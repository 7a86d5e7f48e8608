"""Contact sheets of search results (``aepipe search ... --html FILE``): per query, the query
itself and its k hits as thumbnails with distance and label (images), or as snippets (documents).
One self-contained HTML page, images embedded."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from aepipe.files import atomic_write_bytes
from aepipe.layout import RunLayout
from aepipe.report.figures import thumbnail_png
from aepipe.report.html import CSS, img_tag, open_run
from aepipe.report.items import ItemImages

SHEET_CSS = """
.q{border:1px solid #ccc;margin:10px 0;padding:8px}.hits{display:flex;flex-wrap:wrap;gap:6px}
.hit{text-align:center;font-size:.75em;width:84px}.hit img{image-rendering:pixelated}
.query img{border:2px solid #36c}.doc{font-size:.85em;margin:4px 0}.doc b{font-family:monospace}
"""


def write_contact_sheet(
    run_dir: str | Path,
    results: list[list[Any]],
    path: str | Path,
    image_paths: list[str] | None = None,
    query_ids: list[str] | None = None,
    thumb: int = 72,
) -> dict[str, Any]:
    """Write the page for ``results`` (lists of ``Hit``, one per query). Queries by image file
    (``image_paths``) or by stored id (``query_ids``) are drawn first in their row."""
    run = open_run(RunLayout.at(run_dir))
    images: dict[str, tuple[np.ndarray, bool]] = {}
    query_images: dict[str, np.ndarray] = {}
    if run.is_image and run.model is not None and run.store is not None:
        items = ItemImages(run.cfg, run.model, run.store)
        wanted = {h.id for hits in results for h in hits} | set(query_ids or [])
        images = items.images(sorted(wanted))
        query_images = {i: images[i][0] for i in query_ids or [] if i in images}
        max_pixels = run.model.config.corpus.images.max_pixels
        for p in image_paths or []:  # already read once by the search: a failure here is not expected
            query_images[str(p)] = run.model.prep(Path(p).read_bytes(), max_pixels)  # (C, H, W)
    blocks = []
    for hits in results:
        if not hits:
            continue
        name = hits[0].query
        if run.is_image:
            cells = []
            if query_images and name in query_images:
                cells.append(_cell(img_tag(thumbnail_png(query_images[name], thumb), name), "query", "query"))
            for h in hits:
                pic = img_tag(thumbnail_png(images[h.id][0], thumb), h.id) if h.id in images else ""
                caption = f"#{h.rank} {html.escape(h.id)}<br>d={h.distance:.4g}<br>{html.escape(h.label or '')}"
                cells.append(_cell(pic, caption, "hit"))
            body = '<div class="hits">' + "".join(cells) + "</div>"
        else:
            body = "".join(
                f'<div class="doc">#{h.rank} <b>{html.escape(h.id)}</b> d={h.distance:.4g} '
                f"[{html.escape(h.label or '')}] {html.escape((h.snippet or '')[:300])}</div>"
                for h in hits
            )
        blocks.append(f'<div class="q"><h3>query: {html.escape(name)}</h3>{body}</div>')
    title = f"aepipe search: {len(results)} queries, {html.escape(str(run.layout.root))}"
    page = (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{CSS}{SHEET_CSS}</style></head><body><h1>{title}</h1>\n" + "\n".join(blocks) + "\n</body></html>\n"
    )
    atomic_write_bytes(Path(path), page.encode())
    return {"path": str(path), "n_queries": len(results), "bytes": len(page)}


def _cell(picture: str, caption: str, cls: str) -> str:
    # caption parts are escaped by the caller where they come from data (ids, labels)
    return f'<div class="hit {cls}">{picture}<div>{caption}</div></div>'
