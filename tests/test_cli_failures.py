"""Every CLI failure the user can fix is one line on stderr and exit status 2 (no traceback), for
every subcommand: a bad argument, a missing artifact, a missing optional extra. Commands that fail
write nothing; topics on an image run leaves its clusters alone."""

from __future__ import annotations

import hashlib

import pytest

from aepipe.cli import main
from aepipe.layout import RunLayout

MISSING = "{tmp}/no-run"

# (subcommand argv, expected words in the message); {tmp} is the test's directory, {run} a trained run
CASES = {
    "train-bad-corpus": (["train", "--run-dir", "{tmp}/r", "--corpus", "{tmp}/nothing-here"], "does not exist"),
    "train-bad-set": (["train", "--run-dir", "{tmp}/r", "--set", "model.code_size=-1"], "model.code_size"),
    "encode-no-model": (["encode", "--run-dir", MISSING], "no trained model"),
    "index-no-store": (["index", "--run-dir", MISSING], "no code store"),
    "index-bad-metric": (["index", "--run-dir", "{run}", "--set", "index.metric=hamming"], "index.metric"),
    "update-no-model": (["update", "--run-dir", MISSING], "no trained model"),
    "cluster-no-store": (["cluster", "--run-dir", MISSING], "no code store"),
    "eval-no-model": (["eval", "--run-dir", MISSING], "no trained model"),
    "eval-missing-extra": (["eval", "--run-dir", "{run}", "--set", "evaluation.umap=true"], "pip install"),
    "eval-missing-queries": (
        ["eval", "--run-dir", "{run}", "--set", "evaluation.queries={tmp}/nothing.npy"],
        "does not exist",
    ),
    "search-no-index": (["search", "--run-dir", MISSING, "--id", "x"], "no index"),
    "search-no-query": (["search", "--run-dir", "{run}"], "give queries"),
    "search-unknown-id": (["search", "--run-dir", "{run}", "--id", "no-such-id"], "no-such-id"),
    "search-bad-vectors": (["search", "--run-dir", "{run}", "--vectors", "{tmp}/nothing.npy"], "does not exist"),
    "topics-no-model": (["topics", "--run-dir", MISSING], "no trained model"),
    "topics-image-run": (["topics", "--run-dir", "{run}"], "document run"),
    "info-missing": (["info", MISSING], "does not exist"),
    "config-bad-override": (["config", "show", "--set", "model"], "section.key=value"),
    "run-bad-corpus": (["run", "--no-prefect", "--run-dir", "{tmp}/r", "--corpus", "{tmp}/nothing"], "does not exist"),
    "serve-bad-cron": (["serve", "--run-dir", "{tmp}/r", "--cron", "nightly"], "FLOW=CRON"),
    "demo-bad-set": (["demo", "--out", "{tmp}/demo", "--no-prefect", "--set", "model.loss=absurd"], "model.loss"),
}


def _digest(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


@pytest.mark.parametrize("case", sorted(CASES), ids=str)
def test_every_failure_is_one_line_and_exit_2(case, run_copy, tmp_path, capsys):
    argv, words = CASES[case]
    argv = [a.format(tmp=tmp_path, run=run_copy.run_dir) for a in argv]
    before = _digest(run_copy.run_dir)
    status = main(argv)
    captured = capsys.readouterr()
    err = [line for line in captured.err.splitlines() if line.startswith("aepipe: error:")]
    assert status == 2, captured.err[-2000:]
    assert len(err) == 1 and words in err[0], captured.err[-2000:]
    assert "Traceback" not in captured.err
    assert _digest(run_copy.run_dir) == before  # a failing command changes nothing in the run


def test_topics_on_an_image_run_leaves_its_clusters_alone(run_copy, capsys):
    assert main(["cluster", "--run-dir", str(run_copy.run_dir), "--set", "cluster.n_clusters=3"]) == 0
    clusters = RunLayout.at(run_copy.run_dir).clusters.root
    before = _digest(clusters)
    assert main(["topics", "--run-dir", str(run_copy.run_dir), "--set", "cluster.n_clusters=7"]) == 2
    assert _digest(clusters) == before
    assert "document run" in capsys.readouterr().err
