"""Torture: SIGKILL every writing stage at seeded random moments, rerun it, check the run; start
several writers on one run at once; check ``aepipe verify`` after each case.

    python -m benchmarks.torture --kills 20 --writers 10 --out benchmarks   # long form
    python -m benchmarks.torture --kills 3 --writers 4                       # the CI form (tests/test_torture.py)

Each stage runs as a real ``python -m aepipe.cli`` process on a run of scikit-learn's digits;
after every kill + rerun the run must show ONE consistent published generation: the index, store
and model of the current generation come from the same model, the store's ids are unique and are
exactly the corpus's (digits 0..limit-1, nothing quarantined), ids.parquet holds the same ids, a
Searcher answers and verify finds nothing. Concurrent writers: all but the lock holder are refused
with the one-line RunLocked error (exit 2), none fails otherwise. What it does not cover yet:
fuzzed inputs, full disks, a reader during the kills (tests/test_generations.py has the reader).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
import yaml

BASE = [
    "corpus.source=digits",
    "corpus.limit=300",
    "model.n_layers=1",
    "model.nodes_per_layer=[32]",
    "model.code_size=6",
    "training.max_epochs=3",
    "training.batch_size=64",
    "encode.rows_per_part=50",
    "index.n_eval_queries=50",
]
STAGES = ("train", "encode", "index", "cluster", "update")


@dataclass
class Row:
    fault: str
    cases: int = 0
    survived: int = 0
    lost_items: int = 0
    problems: list[str] = field(default_factory=list)


def _cli(run: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "aepipe.cli", args[0], "--run-dir", str(run), *args[1:]]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env())


def check_run(run: Path) -> tuple[list[str], int]:
    """Problems with the run's current generation, and the number of corpus items missing from it."""
    from aepipe.codes.store import open_store
    from aepipe.index.search import Searcher
    from aepipe.layout import RunLayout
    from aepipe.verify import verify_run

    layout = RunLayout.at(run)
    problems: list[str] = []
    gen = layout.current()
    if gen.name is None:
        return ["no published generation"], 0
    limit = int(yaml.safe_load(layout.config.read_text())["corpus"]["limit"])
    store = open_store(gen.store)
    ids = store.read(["id"]).column("id").to_pylist()
    index_ids = pq.read_table(gen.index.ids).column("id").to_pylist()
    infos = json.loads(gen.index.infos.read_text())
    model_id = json.loads(gen.model.info.read_text())["model_id"]
    if not (store.model_id == infos["model_id"] == model_id):
        problems.append(f"{gen.name}: a mix: store {store.model_id}, index {infos['model_id']}, model {model_id}")
    if len(ids) != len(set(ids)):
        problems.append(f"{gen.name}: duplicate ids in the store")
    expected = {f"{i:04d}" for i in range(limit)}
    lost = len(expected - set(ids))
    if set(ids) != expected:
        problems.append(f"{gen.name}: store ids are not the corpus's ({len(ids)} vs {limit}, {lost} missing)")
    if sorted(index_ids) != sorted(ids) or infos["n_items"] != len(ids):
        problems.append(f"{gen.name}: index ids differ from the store's")
    hits = Searcher(run).search_ids(["0001"], k=3)[0]
    if len(hits) != 3:
        problems.append(f"{gen.name}: search returned {len(hits)} hits")
    report = verify_run(run)
    problems += [f"verify: {p}" for p in report.problems]
    return problems, lost


def _stage_args(stage: str, case: int, limit: int) -> list[str]:
    if stage == "train":  # a new model each time (a different seed)
        return ["train", "--set", f"training.seed={100 + case}"]
    if stage == "update":  # 5 more digits each time: real work for the update
        return ["update", "--set", f"corpus.limit={limit}"]
    if stage == "cluster":
        return ["cluster", "--set", "cluster.n_clusters=5"]
    return [stage]


def kill_and_rerun(run: Path, stage: str, kills: int, rng: random.Random, max_delay: float) -> Row:
    row = Row(f"SIGKILL during {stage}, then rerun")
    limit = 300
    for case in range(kills):
        if stage == "update":
            limit = 300 + 5 * (case + 1)
        args = _stage_args(stage, case, limit)
        proc = subprocess.Popen(
            _cli(run, *args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(), start_new_session=True
        )
        time.sleep(rng.uniform(0.3, max_delay))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rerun = _run(_cli(run, *args))
        if stage in ("train", "encode"):  # publish what they made, as a pipeline would
            rerun = _run(_cli(run, "index")) if rerun.returncode == 0 else rerun
        row.cases += 1
        problems = [f"rerun exited {rerun.returncode}: {rerun.stderr.strip()[-300:]}"] if rerun.returncode else []
        more, lost = check_run(run)
        problems += more
        row.lost_items += lost
        if problems:
            row.problems += [f"case {case}: {p}" for p in problems]
        else:
            row.survived += 1
    return row


def concurrent_writers(run: Path, n: int, rounds: int) -> Row:
    row = Row(f"{n} writers started together (index)")
    for _ in range(rounds):
        procs = [
            subprocess.Popen(_cli(run, "index"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
            for _ in range(n)
        ]
        outs = [(p.wait(), p.stderr.read()) for p in procs]
        row.cases += 1
        problems = []
        ok = sum(1 for status, _ in outs if status == 0)
        refused = sum(1 for status, err in outs if status == 2 and "is being written by pid" in err)
        if ok < 1 or ok + refused != n:
            problems.append(f"{ok} succeeded, {refused} refused, {n - ok - refused} failed otherwise")
        more, lost = check_run(run)
        problems += more
        row.lost_items += lost
        if problems:
            row.problems += problems
        else:
            row.survived += 1
    return row


def torture(workdir: Path, kills: int, writers: int, seed: int, max_delay: float) -> list[Row]:
    run = workdir / "run"
    setup = _run(
        [sys.executable, "-m", "aepipe.cli", "run", "--no-prefect", "--run-dir", str(run)]
        + [a for o in BASE for a in ("--set", o)]
    )
    if setup.returncode:
        raise RuntimeError(f"setup run failed: {setup.stderr[-2000:]}")
    rng = random.Random(seed)
    rows = [kill_and_rerun(run, stage, kills, rng, max_delay) for stage in STAGES]
    rows.append(concurrent_writers(run, writers, max(1, kills // 3)))
    return rows


def table(rows: list[Row]) -> str:
    lines = ["| fault | cases | survived | lost or corrupted items |", "|---|---:|---:|---:|"]
    lines += [f"| {r.fault} | {r.cases} | {r.survived} | {r.lost_items} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.torture", description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs per stage (default 20; CI: 3)")
    p.add_argument("--writers", type=int, default=10, help="writers started together (2-10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-delay", type=float, default=12.0, help="kill within this many seconds of the start")
    p.add_argument("--out", help="write torture.json and RESULTS-torture.md here")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="aepipe-torture-") as tmp:
        rows = torture(Path(tmp), args.kills, args.writers, args.seed, args.max_delay)
    seconds = time.perf_counter() - t0
    text = table(rows)
    print(text)
    for r in rows:
        for problem in r.problems:
            print(f"PROBLEM {r.fault}: {problem}", file=sys.stderr)
    if args.out:
        out = Path(args.out)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        (out / "torture.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
        cmd = " ".join(["python -m benchmarks.torture", *(argv if argv is not None else sys.argv[1:])])
        (out / "RESULTS-torture.md").write_text(
            f"# Torture\n\n`{cmd}` ({seconds:.0f} s)\n\n{text}\n\nMachine: {platform.node()}, {os.cpu_count()} CPUs "
            f"(shared); commit {commit}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n"
        )
    return 0 if all(r.survived == r.cases and r.lost_items == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
