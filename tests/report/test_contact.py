"""Contact sheets: ``aepipe search ... --html FILE`` draws each query and its hits."""

from __future__ import annotations

import json
import re

import numpy as np

from aepipe.cli import main
from aepipe.index.search import Searcher
from aepipe.report.contact import write_contact_sheet


def test_sheet_by_id_shows_the_query_and_every_hit_with_distance_and_label(trained_run, tmp_path, capsys):
    out = tmp_path / "sheet.html"
    code = main(
        ["search", "--run-dir", str(trained_run.run_dir), "--id", "0003", "0010", "-k", "4", "--html", str(out)]
    )
    assert code == 0
    rows = json.loads(capsys.readouterr().out)  # stdout stays the parseable result
    page = out.read_text()
    assert page.count('class="q"') == 2
    for r in rows:
        assert f'title="{r["id"]}"' in page and f"#{r['rank']} {r['id']}<br>d={r['distance']:.4g}" in page
    blocks = page.split('<div class="q">')[1:]
    assert 'class="hit query"><img' in blocks[0] and 'title="0003"' in blocks[0]
    assert all(s.startswith("data:image/png;base64,") for s in re.findall(r'<img src="([^"]*)"', page))
    assert len(re.findall(r"<img ", page)) == 2 * (1 + 4)


def test_sheet_by_image_file_draws_the_query_image(trained_run, tmp_path, digits_x, write_png):
    q = write_png(tmp_path / "q.png", (digits_x[5, 0] * 255).astype(np.uint8))
    s = Searcher(trained_run.run_dir)
    results = s.search_images([q], k=3)
    info = write_contact_sheet(trained_run.run_dir, results, tmp_path / "s.html", image_paths=[str(q)])
    page = (tmp_path / "s.html").read_text()
    assert info["n_queries"] == 1
    assert f'title="{q}"' in page and page.count("<img ") == 4
    assert all(f'title="{h.id}"' in page for h in results[0])
