"""The benchmark commands run end to end in their tiny form (the full runs are by hand)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from benchmarks import mnist_kinds

pytestmark = pytest.mark.slow  # the benchmarks' tiny forms run whole pipelines in subprocesses


def test_mnist_kinds_tiny_writes_a_table_for_each_kind(tmp_path, capsys):
    assert mnist_kinds.main(["--tiny", "--kinds", "dense,variational", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [r["kind"] for r in rows] == ["dense", "variational"]
    for r in rows:
        assert r["sse"] > 0 and r["pca_sse"] > 0
        assert 0 <= r["p10"] <= 1 and 0 <= r["acc"] <= 1 and 0 <= r["nmi"] <= 1
    table = (tmp_path / "results.md").read_text()
    assert "| AE dense+variational |" in table and "Machine:" in table and "--tiny" in table
    assert "Commit: " in table and "SSE ≤ 2.7" in table
    pca_rows = [line for line in table.splitlines() if line.startswith("| PCA |")]
    assert len(pca_rows) == 1 and "(" not in table.split("| method |")[1]  # one method per row, no "(PCA)" cells


def test_mnist_kinds_tiny_with_dec_adds_a_refined_row_after_the_kind(tmp_path):
    assert mnist_kinds.main(["--tiny", "--kinds", "dense", "--dec", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [r["kind"] for r in rows] == ["dense", "dense+dec"]
    dec = rows[1]
    assert 0 <= dec["acc"] <= 1 and 0 <= dec["train_dec_acc"] <= 1 and dec["sse"] > 0
    model_info = json.loads((tmp_path / "runs" / "dense" / "model" / "model.json").read_text())
    assert model_info["refined_by"] == "dec"  # the row measured the refined encoder, not the pretrained one
    assert "| AE dense+dec |" in (tmp_path / "results.md").read_text()


def test_mnist_kinds_tiny_with_scan_scores_the_head_on_the_test_codes(tmp_path):
    assert (
        mnist_kinds.main(["--tiny", "--kinds", "dense", "--scan", "--scan-seeds", "0,1", "--out", str(tmp_path)]) == 0
    )
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [(r["kind"], r.get("scan_seed")) for r in rows] == [("dense", None), ("dense+scan", 0), ("dense+scan", 1)]
    base, scan = rows[:2]
    assert 0 <= scan["stage_acc"] <= 1 and 0 <= scan["stage_nmi"] <= 1 and 0 <= scan["train_scan_acc"] <= 1
    assert scan["p10"] == base["p10"] and scan["acc"] == base["acc"]  # same encoder, same codes
    summary = json.loads((tmp_path / "runs" / "dense" / "clusters" / "summary.json").read_text())
    assert summary["method"] == "scan"
    md = (tmp_path / "results.md").read_text()
    assert "| AE dense+scan (seed 1) |" in md and "cluster stage ACC" in md


def test_mnist_kinds_rejects_unknown_kinds(tmp_path):
    with pytest.raises(SystemExit) as exc:
        mnist_kinds.main(["--tiny", "--kinds", "dense,fancy", "--out", str(tmp_path)])
    assert exc.value.code == 2


def test_stage_benchmark_tiny_reports_every_ratio(tmp_path):
    """All five stages on digits, in seconds; the Prefect half of the pipeline comparison runs
    in a subprocess with its own ephemeral server (under the tests' PREFECT_HOME)."""
    from benchmarks import stages

    assert stages.main(["--tiny", "--in-process", "--out", str(tmp_path)]) == 0
    rows = {r["stage"]: r for r in json.loads((tmp_path / "results.json").read_text())}
    assert list(rows) == list(stages.STAGES)
    for name, row in rows.items():
        assert 0 < row["ratio"] < 1000 and row["aepipe_s"] > 0 and row["reference_s"] > 0, name
        assert row["peak_rss_mb"] > 50, name
    assert rows["index"]["recall_at_10"] >= 0.9 and rows["index"]["bytes_per_vector"] > 32 * 4
    assert rows["pipeline"]["server_start_s"] >= 0 and set(rows["pipeline"]["stage_s_prefect"]) == {
        "train",
        "encode",
        "index",
        "cluster",
    }
    table = (tmp_path / "results.md").read_text()
    assert "Machine:" in table and "--tiny" in table
    assert all(f"| {name} |" in table for name in stages.STAGES)


def test_large_benchmarks_tiny_run_images_and_codes(tmp_path):
    """Both large runs on digits: a Parquet corpus of PNG bytes encoded, indexed and queried by
    image file; a store of codes indexed on disk and searched, with recall against exact search."""
    from benchmarks import large

    out = str(tmp_path)
    assert large.main(["images", "--tiny", "--items", "1500", "--queries", "30", "--out", out]) == 0
    images = json.loads((tmp_path / "images" / "results.json").read_text())[0]
    assert images["n_items"] == 1500 and images["n_queries"] == 30 and images["n_quarantined"] == 0
    assert images["total_s"] >= images["encode_s"] > 0 and images["peak_rss_mb"] > 50
    assert 0 <= images["precision_at_10"] <= 1

    assert large.main(["codes", "--tiny", "--codes", "20000", "--queries", "30", "--out", out]) == 0
    codes = json.loads((tmp_path / "codes" / "results.json").read_text())[0]
    assert codes["n_codes"] == 20_000 and codes["on_disk"] is True  # --on-disk always is the default
    assert codes["recall_at_10_eval"] >= 0.95  # tuned to the target on held-out stored items
    assert 0.5 <= codes["recall_at_10_new_queries"] <= 1.0
    passes = codes["qps_passes"]  # the default 5 passes, the figure their median
    assert len(passes) == 5 and sorted(passes)[2] == pytest.approx(codes["qps"], rel=1e-3)
    table = (tmp_path / "codes" / "results.md").read_text()
    assert "| codes |" in table and "Machine:" in table and "median of 5 passes" in table


def test_large_encode_benchmark_tiny_compares_decoding_and_precision(tmp_path):
    """The encode run on digits: decoding in line, in worker processes, and in workers with bf16
    autocast, each in its own process over the same corpus; then bf16 codes against fp32 ones."""
    from benchmarks import large

    out = str(tmp_path)
    argv = ["encode", "--tiny", "--items", "1500", "--bf16", "--set", "encode.decode_min_items=0", "--out", out]
    assert large.main(argv) == 0
    rows = json.loads((tmp_path / "encode" / "results.json").read_text())
    in_line, workers, bf16, agreement = rows
    assert (in_line["decode_workers"], in_line["autocast"]) == (0, "off")
    assert workers["decode_workers"] > 0 and workers["autocast"] == "off" and bf16["autocast"] == "bf16"
    assert all(r["n_items"] == 1500 and r["n_quarantined"] == 0 and r["encode_items_per_s"] > 0 for r in rows[:3])
    assert agreement["items"] == 1500 and agreement["queries"] == 1000
    assert 0 < agreement["median_relative_difference"] <= agreement["max_relative_difference"] < 0.1
    assert 0.5 < agreement["neighbours_at_10_agreement"] <= 1.0
    table = (tmp_path / "encode" / "results.md").read_text()
    assert "Workers with bf16 autocast (opt-in) / in line fp32" in table and "found again (1,000 queries)" in table


def test_service_benchmark_tiny_measures_every_kind(tmp_path):
    """The latency benchmark's tiny form: a short demo pipeline, the real service in a subprocess,
    2 clients x 20 requests per kind, raw faiss and a cold CLI call; a verdict per target."""
    from benchmarks import service

    assert service.main(["--tiny", "--out", str(tmp_path), "--port", "8779"]) == 0
    summary = json.loads((tmp_path / "results.json").read_text())[0]
    rows = {r["what"]: r for r in summary["rows"]}
    for kind in service.KINDS:
        r = rows[f"service, by {kind}"]
        assert r["n"] == 40 and 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] and r["req_per_s"] > 0
    assert rows["raw faiss index.search, 1 vector per call"]["n"] == 40
    batched = rows["service, by vector, 100 per request"]
    assert batched["n"] == 40 and batched["vectors_per_s"] == pytest.approx(100 * batched["req_per_s"])
    assert rows["raw faiss index.search, 100 vectors per call"]["vectors_per_s"] > 0
    assert 0 < summary["pipeline"]["report_html_s"] < summary["pipeline"]["pipeline_s"]
    bulk = rows["service, bulk by vector, 1000 per request (arrays)"]
    assert bulk["n"] == 10 and bulk["vectors_per_s"] == pytest.approx(1000 * bulk["req_per_s"])
    binary = rows["service, bulk by vector, 1000 per request (npy -> Arrow)"]
    assert binary["n"] == 10 and binary["vectors_per_s"] == pytest.approx(1000 * binary["req_per_s"])
    assert rows["raw faiss index.search, 1000 vectors per call"]["n"] == 10
    assert len(summary["checks"]) == 7
    table = (tmp_path / "results.md").read_text()
    assert "Machine:" in table and "--tiny" in table and "| target |" in table


def test_restoration_tiny_writes_every_table(tmp_path):
    """Every task and the rate-distortion table on synthetic images, with tiny models."""
    from benchmarks import restoration

    assert restoration.main(["--tiny", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())
    tasks = {r["task"] for r in rows}
    assert tasks == {"denoise", "colorize", "remove_watermark", "compress"}
    methods = {r["method"] for r in rows if r["task"] == "denoise"}
    assert {"noisy input", "non-local means (h/σ)", "BM3D (true σ)", "autoencoder (U-Net)"} <= methods
    assert all(r["psnr"] > 0 for r in rows if r["method"] != "(truth)")
    models = json.loads((tmp_path / "models.json").read_text())
    assert [m["model"] for m in models] == list(restoration.TASKS)
    table = (tmp_path / "results.md").read_text()
    assert "Machine:" in table and "--tiny" in table and "headers" in table
    assert (tmp_path / "pictures" / "colorize.png").is_file()


def test_restoration_grayscale_denoise_and_train_only(tmp_path):
    """MNIST-shaped data (N, H, W): denoising with BM3D's grayscale form; other sections refused;
    --train-only trains one model on the training images and reports its validation figures only."""
    from sklearn.datasets import load_digits

    from benchmarks import restoration

    digits = np.kron(load_digits().images * 16, np.ones((2, 2))).clip(0, 255).astype(np.uint8)  # (1797, 16, 16)
    npz = tmp_path / "gray.npz"
    np.savez(npz, x_train=digits[:1200], x_test=digits[1200:])
    small = ["--data", str(npz), "--minutes", "0.1", "--test", "30", "--test-slow", "8", "--test-bm3d", "2"]
    small += ["--tune", "40", "--tune-slow", "6", "--channels", "8, 16, 32", "--threads", "1"]
    with pytest.raises(SystemExit):
        restoration.main([*small, "--out", str(tmp_path / "refused"), "--only", "denoise,colorize"])
    assert restoration.main([*small, "--out", str(tmp_path / "d"), "--only", "denoise"]) == 0
    rows = json.loads((tmp_path / "d" / "results.json").read_text())
    bm3d = [r for r in rows if r["method"] == "BM3D (true σ)"]
    assert len(bm3d) == 2 and all(r["n"] == 2 and r["psnr"] > 0 for r in bm3d)
    models = json.loads((tmp_path / "d" / "models.json").read_text())
    assert all(m["val_psnr"] is not None and m["steps"] > 0 for m in models)
    table = (tmp_path / "d" / "results.md").read_text()
    assert "### Restoration" in table and "### Compression" not in table  # no empty section
    out = tmp_path / "t"
    assert restoration.main([*small, "--out", str(out), "--train-only", "denoise_gaussian"]) == 0
    assert not (out / "results.json").exists() and (out / "runs" / "denoise_gaussian" / "model").is_dir()


def _newsgroups_like(path, seed: int = 0) -> None:
    """Documents of four topics (a word pool each, plus words every topic uses), with a split column;
    the test rows carry a fifth label that no training row has."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    shared = [f"common{i}" for i in range(30)]
    pools = {t: [f"{t}word{i}" for i in range(25)] for t in ("space", "cars", "guns", "med")}
    rows = []
    for split, n in (("train", 240), ("test", 40)):
        for i in range(n):
            topic = list(pools)[i % 4]
            words = list(rng.choice(pools[topic], 12)) + list(rng.choice(shared, 8))
            rows.append(
                {"text": " ".join(words), "label": topic if split == "train" else f"test-{topic}", "split": split}
            )
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_newsgroups_validation_never_reads_the_test_rows(tmp_path):
    """--validate: queries are held-out training rows; the test rows (here with labels of their own)
    never enter the run. Without it the test rows are the queries. Both tables say which."""
    from benchmarks import newsgroups

    data = tmp_path / "docs.parquet"
    _newsgroups_like(data)
    common = ["--data", str(data), "--tiny", "--dims", "4", "--epochs", "2", "--minutes", "1", "--max-features", "60"]
    scan = ["--scan", "--set", "cluster.scan_steps=100", "--set", "cluster.scan_heads=2"]
    assert newsgroups.main([*common, "--validate", *scan, "--out", str(tmp_path / "val")]) == 0
    md = (tmp_path / "val" / "results.md").read_text()
    assert "VALIDATION" in md and "48 held-out training documents query the other 192" in md
    assert "NMI ≥ 0.55" in md and "Commit: " in md
    val_queries = pq.read_table(tmp_path / "val" / "data" / "test.parquet").column("label").to_pylist()
    assert len(val_queries) == 48 and not any(label.startswith("test-") for label in val_queries)
    rows = json.loads((tmp_path / "val" / "results.json").read_text())
    assert {r["method"].split(" ")[0] for r in rows} == {"TF-IDF", "LSA", "AE"}
    assert next(r for r in rows if r["method"] == "LSA")["p10"] > 0.5  # four clean topics: easy for LSA
    ae, scanned = (
        next(r for r in rows if r["method"].startswith("AE") and r["method"].endswith(e)) for e in (")", "scan")
    )
    assert scanned["p10"] == ae["p10"] and 0 <= scanned["nmi"] <= 1 and "| AE (knn target k=10) + scan | 4 |" in md

    assert newsgroups.main([*common, "--out", str(tmp_path / "test"), "--knn-k", "0"]) == 0
    md = (tmp_path / "test" / "results.md").read_text()
    assert "VALIDATION" not in md and "40 test documents query 240 training documents" in md
    from aepipe.model.saved import load_model

    # --knn-k 0 switches the documents preset's neighbour targets off (it used to leave k=10 on)
    assert load_model(tmp_path / "val" / "runs" / "ae4" / "model").config.training.knn_target is not None
    assert load_model(tmp_path / "test" / "runs" / "ae4" / "model").config.training.knn_target is None


def test_gpu_check_rehearsed_on_the_cpu_runs_every_step_and_compares_codes(tmp_path):
    """The path a machine with two GPUs takes (bf16-mixed DDP training on both, bf16 autocast
    encode, then fp32 of the same model, agreement of the two code sets, the table), with "cpu"
    where CUDA would be: no GPU has been lent to this project yet, so this keeps the check runnable."""
    from benchmarks import gpu_check

    out = tmp_path / "out"
    argv = ["--rehearse-on-cpu", "2", "--data", str(tmp_path / "absent.npz"), "--items", "600", "--epochs", "1"]
    assert gpu_check.main([*argv, "--cpu-threads", "1", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert [r.get("run") for r in rows[:2]] == ["cpu", "cpu x2 bf16"]
    for r in rows[:2]:
        assert r["n_items"] == 600 and r["train_s"] > 0 and r["encode_items_per_s"] > 0
    agree = rows[2]["agreement"]
    assert 0.95 < agree["mean_cosine"] < 1.0  # bf16 moves codes a little, not at all or a lot
    assert 0.0 < agree["max_abs_diff_over_std"] < 0.5 and 0.5 < agree["knn10_overlap"] <= 1.0
    assert "| cpu x2 bf16 | 600 |" in (out / "results.md").read_text()
