"""Latency of the search service (``aepipe serve-search``) under a bounded load from loopback, next to
a raw faiss search of the same vectors and a cold CLI call; and the HTML report's time next to the
pipeline's on the demo.

    python -m benchmarks.service                      # demo pipeline (digits), then 8 clients x 500 requests per kind
    python -m benchmarks.service --run-dir RUN        # an existing run instead of the demo
    python -m benchmarks.service --tiny               # CI's form: few epochs, 2 clients x 20 requests

Per kind (by id, by 28x28 PNG upload, by vector): ``--clients`` client processes (forked; threads
with ``--client-threads``), each with its own keep-alive HTTP connection, send ``--requests`` requests one after another (k=10); every latency
is recorded client-side (p50/p95/p99) and requests/s is all requests over the wall time. Raw
faiss: the same vectors through ``index.search`` one query per call, in the same number of
threads, in this process (no HTTP, no JSON, no ids). Batches (``--vector-batch B``): the same load
with B vectors per request, against raw faiss with B vectors per call; throughput in vectors/s.
Cold CLI: ``aepipe search --id`` as a new process, the median of 3.

Targets (issue #14): p99 <= 20 ms by id, <= 50 ms by 28x28 upload; by-vector throughput >= 0.5x raw
faiss; report generation <= 10 % of the pipeline's time on the demo.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import commit, write_results

KINDS = ("id", "image", "vector")


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared; load average {load:.1f} at "
        f"the start), service OMP_NUM_THREADS=1, {platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def demo_pipeline(run_dir: Path, tiny: bool) -> dict[str, Any]:
    from aepipe.cli.pipeline import DEMO_OVERRIDES
    from aepipe.config import build_config
    from aepipe.pipeline import run_pipeline

    extra = ["training.max_epochs=3", "corpus.limit=600"] if tiny else []
    cfg = build_config(overrides=[*DEMO_OVERRIDES, *extra, f"run_dir={run_dir}"])
    t = time.perf_counter()
    report = run_pipeline(cfg)
    total = time.perf_counter() - t
    return {
        "pipeline_s": round(total, 2),
        "stages_s": report["timings_s"],
        "report_html_s": report["html"]["seconds"],
        "report_html_kib": round(report["html"]["bytes"] / 1024, 1),
        "report_share": round(report["html"]["seconds"] / total, 4),
        "n_items": report["counts"]["n_items"],
        "epochs": report["epochs"],
    }


def start_service(run_dir: Path, port: int) -> tuple[subprocess.Popen, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t = time.perf_counter()
    cmd = [sys.executable, "-m", "aepipe.cli", "serve-search", "--run-dir", str(run_dir), "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
            return proc, time.perf_counter() - t
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"service exited: {proc.stderr.read()[-2000:] if proc.stderr else ''}") from None
            time.sleep(0.2)


def png_28(img: np.ndarray) -> bytes:
    """A digit (8, 8) in [0, 1] as a 28x28 grayscale PNG: the upload size of the target."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((img * 255).round().astype(np.uint8)).resize((28, 28), Image.Resampling.BILINEAR).save(buf, "PNG")
    return buf.getvalue()


def percentiles(lat_s: list[float], wall_s: float) -> dict[str, float]:
    ms = np.array(lat_s) * 1000
    return {
        "n": len(ms),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "req_per_s": round(len(ms) / wall_s, 1),
    }


def run_load(clients: int, requests: int, one: Any, as_processes: bool = True) -> dict[str, float]:
    """``clients`` concurrent clients, each calling ``one(client_index, i, session)`` ``requests``
    times on its own keep-alive connection. Clients are forked processes by default, as
    independent users are: as threads of one Python process they also wait for each other's GIL,
    and that wait lands in every latency measured (``--client-threads``: the earlier form)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")  # fork: ``one`` is a closure and is never pickled
    start = ctx.Barrier(clients + 1) if as_processes else threading.Barrier(clients + 1)
    results: Any = ctx.Queue() if as_processes else []

    def worker(c: int) -> None:
        import httpx

        lat: list[float] = []
        errors: list[str] = []
        with httpx.Client(timeout=30) as session:
            one(c, -1, session)  # connect + warm outside the measurement
            start.wait()
            for i in range(requests):
                t = time.perf_counter()
                r = one(c, i, session)
                lat.append(time.perf_counter() - t)
                if r is not None and r.status_code != 200:
                    errors.append(f"{r.status_code} {r.text[:200]}")
        if as_processes:
            results.put((lat, errors))
        else:
            results.append((lat, errors))

    kind = ctx.Process if as_processes else threading.Thread
    workers = [kind(target=worker, args=(c,)) for c in range(clients)]
    for w in workers:
        w.start()
    start.wait()
    t0 = time.perf_counter()
    got = [results.get(timeout=900) for _ in workers] if as_processes else None  # before join: no pipe stall
    wall = time.perf_counter() - t0
    for w in workers:
        w.join()
    if not as_processes:
        wall, got = time.perf_counter() - t0, results
    assert got is not None and len(got) == clients, "a client process died"
    errors = [e for _, errs in got for e in errs]
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests, e.g. {errors[0]}")
    return percentiles([x for lat, _ in got for x in lat], wall)


def raw_faiss(run_dir: Path, vectors: np.ndarray, clients: int, requests: int, batch: int = 1) -> dict[str, float]:
    from aepipe.files import read_json
    from aepipe.index.faissio import normalize, read_index_file, set_search_params
    from aepipe.layout import RunLayout

    files = RunLayout.at(run_dir).index
    infos = read_json(files.infos)
    index = read_index_file(files, infos)
    set_search_params(index, infos.get("params", {}))
    q = normalize(vectors.astype(np.float32), infos["metric"])

    def one(c: int, i: int, _session: Any) -> None:
        j = (c * requests + max(i, 0)) * batch % len(q)
        index.search(np.take(q, range(j, j + batch), axis=0, mode="wrap"), 10)

    lat: list[list[float]] = [[] for _ in range(clients)]
    start = threading.Barrier(clients + 1)

    def worker(c: int) -> None:
        start.wait()
        for i in range(requests):
            t = time.perf_counter()
            one(c, i, None)
            lat[c].append(time.perf_counter() - t)

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    for th in threads:
        th.start()
    start.wait()
    t0 = time.perf_counter()
    for th in threads:
        th.join()
    return percentiles([x for per in lat for x in per], time.perf_counter() - t0)


def cold_cli(run_dir: Path, item_id: str, n: int = 3) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        cmd = [sys.executable, "-m", "aepipe.cli", "search", "--run-dir", str(run_dir), "--id", item_id, "-k", "10"]
        subprocess.run([*cmd, "--format", "json"], capture_output=True, check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.service", description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", help="an existing run (default: run the demo pipeline into OUT/run)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=500, help="requests per client per kind")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument(
        "--vector-batch", type=int, default=100, help="vectors per request in the batched by-vector rows (max 1000)"
    )
    p.add_argument(
        "--bulk-batch",
        type=int,
        default=1000,
        help="vectors per request in the bulk rows (JSON format=arrays with orjson on the client, and npy -> Arrow; max 1000)",
    )
    p.add_argument(
        "--client-threads",
        action="store_true",
        help="clients as threads of this process (the form before session 7) instead of processes",
    )
    p.add_argument(
        "--tiny", action="store_true", help="CI's form: a 3-epoch demo on 600 digits, 2 clients x 20 requests"
    )
    p.add_argument("--out", default="bench-out/service")
    args = p.parse_args(argv)
    if args.tiny:
        args.clients, args.requests = 2, 20
    out = Path(args.out)
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    mach, code = machine(), commit()  # at the start: the code the whole run measures
    pipeline = None
    run_dir = Path(args.run_dir) if args.run_dir else out / "run"
    if not args.run_dir:
        print("demo pipeline ...", file=sys.stderr, flush=True)
        pipeline = demo_pipeline(run_dir, args.tiny)
        print(json.dumps(pipeline), file=sys.stderr, flush=True)

    from aepipe.index.search import Searcher

    s = Searcher(run_dir)
    rng = np.random.default_rng(0)
    ids = [s.ids[i] for i in rng.choice(len(s.ids), min(500, len(s.ids)), replace=False)]
    vectors = s.vectors_for_ids(ids)
    from sklearn.datasets import load_digits

    digits = load_digits().images / 16.0
    pngs = [png_28(digits[i]) for i in rng.choice(len(digits), 200, replace=False)]

    proc, startup_s = start_service(run_dir, args.port)
    url = f"http://127.0.0.1:{args.port}"
    rows: list[dict[str, Any]] = []
    load = functools.partial(run_load, as_processes=not args.client_threads)
    try:
        senders = {
            "id": lambda c, i, sess: sess.post(
                url + "/api/search/ids", json={"ids": [ids[(c * 31 + i) % len(ids)]], "k": 10}
            ),
            "image": lambda c, i, sess: sess.post(
                url + "/api/search/images",
                files=[("files", ("q.png", pngs[(c * 17 + i) % len(pngs)], "image/png"))],
                data={"k": "10"},
            ),
            "vector": lambda c, i, sess: sess.post(
                url + "/api/search/vectors", json={"vectors": [vectors[(c * 13 + i) % len(vectors)].tolist()], "k": 10}
            ),
        }
        for kind in KINDS:
            print(f"service, by {kind} ...", file=sys.stderr, flush=True)
            rows.append({"what": f"service, by {kind}", **load(args.clients, args.requests, senders[kind])})
        b = args.vector_batch
        batches = [np.take(vectors, range(j * b, j * b + b), axis=0, mode="wrap").tolist() for j in range(50)]
        print(f"service, by vector, {b} per request ...", file=sys.stderr, flush=True)
        batched = load(
            args.clients,
            args.requests,
            lambda c, i, sess: sess.post(
                url + "/api/search/vectors", json={"vectors": batches[(c * 7 + i) % len(batches)], "k": 10}
            ),
        )
        rows.append(
            {"what": f"service, by vector, {b} per request", **batched, "vectors_per_s": batched["req_per_s"] * b}
        )
        # Bulk, two forms, the same vectors, bulk_batch per request, the answer parsed as a batch job
        # would: JSON arrays (ids and distances, no record per hit; built and parsed with orjson), and
        # binary (a .npy body, an Arrow IPC stream read with pyarrow: no Python object per hit).
        import orjson
        import pyarrow as pa

        bb = args.bulk_batch
        chunks = [np.take(vectors, range(j * bb, j * bb + bb), axis=0, mode="wrap") for j in range(8)]

        def npy(arr: np.ndarray) -> bytes:
            buf = io.BytesIO()
            np.save(buf, arr.astype(np.float32))
            return buf.getvalue()

        bulk_forms = [  # (row label, URL, content type, bodies, answer parser)
            (
                "arrays",
                "/api/search/vectors",
                "application/json",
                [orjson.dumps({"vectors": c.tolist(), "k": 10, "format": "arrays"}) for c in chunks],
                orjson.loads,
            ),
            (
                "npy -> Arrow",
                "/api/search/vectors?k=10",
                "application/x-npy",
                [npy(c) for c in chunks],
                lambda content: pa.ipc.open_stream(content).read_all(),
            ),
        ]
        for label, path, content_type, bodies, parse in bulk_forms:

            def bulk(
                c: int, i: int, sess: Any, path=path, content_type=content_type, bodies=bodies, parse=parse
            ) -> Any:
                r = sess.post(
                    url + path, content=bodies[(c + max(i, 0)) % len(bodies)], headers={"content-type": content_type}
                )
                if r.status_code == 200:
                    parse(r.content)
                return r

            print(f"service, bulk by vector, {bb} per request, {label} ...", file=sys.stderr, flush=True)
            bulked = load(args.clients, max(args.requests // 10, 5), bulk)
            rows.append(
                {
                    "what": f"service, bulk by vector, {bb} per request ({label})",
                    **bulked,
                    "vectors_per_s": bulked["req_per_s"] * bb,
                }
            )
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    print("raw faiss ...", file=sys.stderr, flush=True)
    rows.append(
        {
            "what": "raw faiss index.search, 1 vector per call",
            **raw_faiss(run_dir, vectors, args.clients, args.requests),
        }
    )
    for batch, requests in ((args.bulk_batch, max(args.requests // 10, 5)), (args.vector_batch, args.requests)):
        raw = raw_faiss(run_dir, vectors, args.clients, requests, batch)
        rows.append(
            {
                "what": f"raw faiss index.search, {batch} vectors per call",
                **raw,
                "vectors_per_s": raw["req_per_s"] * batch,
            }
        )
    print("cold CLI ...", file=sys.stderr, flush=True)
    cli_s = cold_cli(run_dir, ids[0])
    rows.append(
        {
            "what": "cold CLI: aepipe search --id (new process)",
            "n": 3,
            "p50_ms": round(cli_s * 1000, 1),
            "p95_ms": None,
            "p99_ms": None,
            "req_per_s": round(1 / cli_s, 2),
        }
    )

    by = {r["what"]: r for r in rows}
    checks = [
        ("p99 by id <= 20 ms", by["service, by id"]["p99_ms"], 20.0, by["service, by id"]["p99_ms"] <= 20.0),
        (
            "p99 by 28x28 upload <= 50 ms",
            by["service, by image"]["p99_ms"],
            50.0,
            by["service, by image"]["p99_ms"] <= 50.0,
        ),
    ]
    b, bb = args.vector_batch, args.bulk_batch
    throughput = [  # (target, service row, raw faiss row): vectors/s over vectors/s
        ("by-vector throughput >= 0.5x raw faiss", "service, by vector", "raw faiss index.search, 1 vector per call"),
        (
            f"by-vector throughput >= 0.5x raw faiss, {b} vectors per request",
            f"service, by vector, {b} per request",
            f"raw faiss index.search, {b} vectors per call",
        ),
        (
            f"bulk by-vector throughput >= 0.5x raw faiss, {bb} vectors per request, arrays",
            f"service, bulk by vector, {bb} per request (arrays)",
            f"raw faiss index.search, {bb} vectors per call",
        ),
        (
            f"bulk by-vector throughput >= 0.5x raw faiss, {bb} vectors per request, npy -> Arrow",
            f"service, bulk by vector, {bb} per request (npy -> Arrow)",
            f"raw faiss index.search, {bb} vectors per call",
        ),
    ]
    for target, service_row, raw_row in throughput:
        ratio = by[service_row].get("vectors_per_s", by[service_row]["req_per_s"]) / by[raw_row].get(
            "vectors_per_s", by[raw_row]["req_per_s"]
        )
        checks.append((target, round(ratio, 4), 0.5, ratio >= 0.5))
    if pipeline:
        share = pipeline["report_share"]
        checks.append(("report.html <= 10 % of the pipeline's time", share, 0.10, share <= 0.10))

    def verdict(value: float, target: float, ok: bool) -> str:
        return "met" if ok else f"MISSED by {abs(value - target):.4g}"

    cmd = "python -m benchmarks.service " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"# Search service latency ({'tiny' if args.tiny else 'full'})",
        "",
        f"Command: `{cmd.strip()}`  ",
        f"Machine: {mach}  ",
        f"Commit: {code}; started {started}  ",
        f"Load: {args.clients} concurrent clients ({'threads of one process' if args.client_threads else 'processes'}, keep-alive httpx) x {args.requests} requests per kind, k=10, "
        f"loopback; index {s.infos['index_string']} of {s.index.ntotal} {s.dim}-d codes; service start-up {startup_s:.1f} s",
        "",
        "| what | requests | p50 ms | p95 ms | p99 ms | req/s | vectors/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        r.setdefault("vectors_per_s", r["req_per_s"] if "vector" in r["what"] else None)
        cols = ("n", "p50_ms", "p95_ms", "p99_ms", "req_per_s", "vectors_per_s")
        cells = ["" if r[c] is None else str(round(r[c], 1) if c == "vectors_per_s" else r[c]) for c in cols]
        lines.append(f"| {r['what']} | " + " | ".join(cells) + " |")
    lines += ["", "| target | measured | target | verdict |", "|---|---:|---:|---|"]
    lines += [f"| {name} | {value} | {target} | {verdict(value, target, ok)} |" for name, value, target, ok in checks]
    if pipeline:
        lines += [
            "",
            f"Demo pipeline ({pipeline['n_items']} digits, {pipeline['epochs']} epochs, no Prefect): {pipeline['pipeline_s']} s "
            f"(stages {pipeline['stages_s']}), of which report.html {pipeline['report_html_s']} s "
            f"({pipeline['report_html_kib']} KiB, {100 * pipeline['report_share']:.1f} %).",
        ]
    summary = {
        "rows": rows,
        "pipeline": pipeline,
        "checks": [{"target": c[0], "value": c[1], "met": c[3]} for c in checks],
    }
    write_results(out, [summary], "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
