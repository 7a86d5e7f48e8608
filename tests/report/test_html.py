"""The visual run report (RUN/report.html): made from a real trained, encoded, indexed and clustered
run; self-contained; each section present, or saying why not."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from aepipe.cli import main
from aepipe.cluster.kmeans import cluster_codes
from aepipe.corpus import Quarantine
from aepipe.layout import RunLayout
from aepipe.report.html import read_training_curves, write_html_report


@pytest.fixture
def clustered(run_copy):
    cluster_codes(run_copy.config())
    return run_copy


def _sections(page: str) -> set[str]:
    return set(re.findall(r'<section id="(\w+)">', page))


def test_report_of_a_clustered_run_is_self_contained_with_every_section(clustered):
    out = write_html_report(clustered.run_dir)
    layout = RunLayout.at(clustered.run_dir)
    assert out["path"] == str(layout.report_html) and out["bytes"] > 0
    page = layout.report_html.read_text()
    assert _sections(page) >= {"summary", "curves", "recon", "eval", "clusters", "map", "index", "quarantine"}
    assert "topics" not in _sections(page)  # an image run has no topics section
    assert "restoration" not in _sections(page)  # nor a restoration section: its task is reconstruct
    srcs = re.findall(r'<img src="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)  # nothing beside the page
    assert "not available" not in page
    # reconstruction grid: original, autoencoder and PCA rows of the same held-out items
    recon = page.split('<section id="recon">')[1].split("</section>")[0]
    assert recon.count("<b>original</b>") == 1 and "<b>autoencoder</b>" in recon and "<b>PCA-10</b>" in recon
    held = [i for i, s in zip(*pq.read_table(layout.model.split).to_pydict().values()) if s == "test"][:10]
    assert all(recon.count(f'title="{i}"') == 3 for i in held)
    # one sheet per cluster with label, purity, a decoded prototype and the members nearest the centre
    summary = json.loads(layout.clusters.summary.read_text())
    sheets = page.split('<section id="clusters">')[1].split("</section>")[0]
    assert (
        sheets.count('class="sheet"') == summary["n_clusters"]
        and f"{summary['n_clusters']} clusters (k-means) of" in sheets
    )
    assert sheets.count('class="proto"') == summary["n_clusters"]
    assert "majority label" in sheets and "purity" in sheets and "decoded: corpus unreadable" not in sheets
    assert sheets.count("<img") == summary["n_clusters"] + sum(min(12, s) for s in summary["sizes"])
    assert "No item was quarantined." in page
    assert "coloured by label" in page


def test_thumbnails_fall_back_to_decoded_codes_when_the_corpus_is_gone(clustered):
    """A run whose corpus cannot be read any more still gets its cluster sheets, marked as decoded."""
    layout = RunLayout.at(clustered.run_dir)
    cfg = clustered.config("corpus.source=/nonexistent/images")
    from aepipe.config import dump_config

    layout.config.write_text(dump_config(cfg))
    write_html_report(clustered.run_dir)
    page = layout.report_html.read_text()
    assert "decoded: corpus unreadable" in page
    assert 'id="recon"' in page and "not available" in page.split('<section id="recon">')[1].split("</section>")[0]


def test_missing_artifacts_are_named_not_fatal(run_copy):
    """Stages run one at a time, never clustered: the report still comes, saying what is missing."""
    write_html_report(run_copy.run_dir)
    page = RunLayout.at(run_copy.run_dir).report_html.read_text()
    assert "no clusters (run `aepipe cluster`)" in page
    assert "no pipeline report (report.json)" in page


def test_quarantine_section_counts_reasons(clustered):
    layout = RunLayout.at(clustered.run_dir)
    q = Quarantine("encode")
    q.add("a.png", "/x/a.png", "not an image")
    q.add("b.png", "/x/b.png", "not an image")
    q.add("c.png", "/x/c.png", "zero-byte file")
    q.write(layout.quarantine("encode"))
    write_html_report(clustered.run_dir)
    section = layout.report_html.read_text().split('<section id="quarantine">')[1].split("</section>")[0]
    assert '<td>not an image</td><td class="n">2</td>' in section and "zero-byte file" in section


def test_training_curves_read_the_lightning_csv(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train_loss,val_loss\n0,2,,0.9\n0,2,1.0,\n1,5,,0.7\n1,5,0.8,\n2,8,,0.6\n2,8,0.65,\n")
    curves = read_training_curves(path)
    assert curves["train_loss"] == ([0, 1, 2], [1.0, 0.8, 0.65])
    assert curves["val_loss"] == ([0, 1, 2], [0.9, 0.7, 0.6])


def test_cli_report_writes_the_page_and_prints_json(clustered, capsys, tmp_path):
    out = tmp_path / "elsewhere.html"
    assert main(["report", str(clustered.run_dir), "-o", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["path"] == str(out) and out.read_text().startswith("<!doctype html>")


def test_cli_report_of_a_missing_run_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aepipe: error: run directory") and err.count("\n") == 1


def test_decoded_prototypes_match_the_cluster_means(clustered):
    """The red-framed prototype is the decoder's image of the stored cluster mean."""
    from aepipe.model.saved import load_model
    from aepipe.report.items import ItemImages

    layout = RunLayout.at(clustered.run_dir)
    model = load_model(layout.model)
    means = np.load(layout.clusters.centroids)
    imgs = ItemImages(clustered.config(), model).decode(means.astype(np.float32))
    assert imgs.shape == (len(means), 1, 8, 8) and 0.0 <= imgs.min() and imgs.max() <= 1.0
