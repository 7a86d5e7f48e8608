"""Torture: SIGKILL every writing stage at seeded random moments while it holds the run's writer
lock, rerun it, check the run; start several writers on one run at once; check ``aepipe verify``
after each case.

    python -m benchmarks.torture --kills 20 --writers 10 --out benchmarks   # long form
    python -m benchmarks.torture --kills 3 --writers 4                       # the CI form (tests/test_torture.py)

Each stage runs as a real ``python -m aepipe.cli`` process on a run of scikit-learn's digits. Per
stage, one unkilled calibration run first measures how long the stage holds the lock: from the
moment RUN/.lock names the process (the median of ``--calibrations`` runs, default 3) (the CLI process itself takes the lock, aepipe/cli/stages.py,
and writes its pid there) until the lock file stops naming it (the holder truncates it on release),
and on to its exit. The hold time, not the exit: the interpreter's teardown after the release
(torch, Lightning) takes longer than the stage's work for some stages (train: ~0.8 s held, exit
~1.5 s later), and kills there would test nothing. Each killed case then waits until the started
process holds the lock and SIGKILLs its process group a seeded uniform fraction u in [0, 1.1) of
the calibrated hold time later; every other kill (odd cases) is aimed instead: uniform in the
calibrated writing window, from the first write seen to the release, where a kill is most likely
to catch a half-written file. Each kill is classed by what it hit: the lock holder (the lock
file still named it just before the kill), a process past its release (still exiting), or a miss
(it had exited already: counted apart, not as a kill). Where each kill landed is recorded at that
moment (the process is dead, so nothing changes until the rerun): u, seconds after the lock, the
entries under RUN/.staging, in-flight files elsewhere (``.tmp-``/``.old-`` names of atomic writes
and directory swaps) and generations/* that appeared. The calibration run also notes when its first
such entry appeared: at the CI sizes the writing is the last sliver of the hold (the stage imports
torch/faiss and reads the corpus under the lock first), so few uniform kills land inside it.

After every kill + rerun the run must show ONE consistent published generation: the index, store
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
import statistics
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
U_MAX = 1.1  # kill at u * (calibrated lock hold time), u uniform in [0, U_MAX): some land after the release
POLL_S = 0.005  # how often the lock file is read while waiting for the process to take the lock


@dataclass
class Kill:
    """Where one kill landed (recorded after the SIGKILL, before the rerun)."""

    case: int
    u: float
    aimed: bool  # drawn inside the calibrated writing window (first write -> release), not the whole hold
    planned_s: float  # u * the calibrated hold time
    after_lock_s: float | None  # lock taken -> the kill (or -> the exit, for a miss); None: lock never seen
    holding: bool  # the lock file still named the process just before the kill
    missed: bool  # the process had exited by itself before the kill moment
    exit_code: int | None  # of the killed (-9) or exited process
    staging: list[str]  # entries under RUN/.staging (two levels)
    staging_files: int  # files anywhere under RUN/.staging
    in_flight: list[str]  # .tmp-* / .old-* entries outside .staging: atomic writes, directory swaps
    new_generations: list[str]  # generations/* that were not there when the process started
    published: bool  # the current generation changed before the kill
    rerun_exit: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class Row:
    fault: str
    cases: int = 0
    kills: int = 0  # landed while the process held the lock
    after_release: int = 0  # landed after the process released the lock, while it was exiting
    misses: int = 0  # the process had exited before the kill moment (or never took the lock)
    survived: int = 0
    lost_items: int = 0
    calibrated_s: float | None = None  # the unkilled run: lock taken -> released (what u scales)
    calibrated_exit_s: float | None = None  # the unkilled run: lock taken -> exit
    calibrated_writes_s: float | None = None  # the unkilled run: lock taken -> first staging/.tmp- entry seen
    landed: list[Kill] = field(default_factory=list)
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


def _stage_args(stage: str, case: int) -> list[str]:
    """The command of case ``case`` of ``stage`` (case -1: the calibration run)."""
    if stage == "train":  # a new model each time (a different seed)
        return ["train", "--set", f"training.seed={100 + case}"]
    if stage == "update":  # 5 more digits each time: real work for the update
        return ["update", "--set", f"corpus.limit={300 + 5 * (case + 2)}"]
    if stage == "cluster":
        return ["cluster", "--set", "cluster.n_clusters=5"]
    return [stage]


def _start(run: Path, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        _cli(run, *args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(), start_new_session=True
    )


def _lock_pid(run: Path) -> int | None:
    """The pid RUN/.lock names (None: free, or being written)."""
    try:
        return json.loads((run / ".lock").read_text() or "{}").get("pid")
    except (OSError, ValueError):
        return None


def _wait_for_lock(proc: subprocess.Popen, run: Path, timeout: float = 600) -> float | None:
    """time.monotonic() when ``proc`` (the CLI process: the lock holder) was first seen holding the
    run's lock; None if it exited without being seen holding it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _lock_pid(run) == proc.pid:
            return time.monotonic()
        if proc.poll() is not None:
            return None
        time.sleep(POLL_S)
    raise TimeoutError(f"pid {proc.pid} did not take the lock of {run} within {timeout:.0f} s")


def _generations(run: Path) -> set[str]:
    gens = run / "generations"
    return {p.name for p in gens.iterdir()} if gens.is_dir() else set()


def _current_generation(run: Path) -> str | None:
    try:
        return json.loads((run / "generations" / "current.json").read_text()).get("generation")
    except (OSError, ValueError):
        return None


def _snapshot(run: Path) -> tuple[list[str], int, list[str]]:
    """(entries under RUN/.staging two levels deep, files under it, .tmp-/.old- entries elsewhere)."""
    staging_root = run / ".staging"
    staging, files = [], 0
    if staging_root.is_dir():
        for path in staging_root.rglob("*"):
            rel = path.relative_to(staging_root)
            if len(rel.parts) <= 2:
                staging.append(str(rel))
            files += path.is_file()
    in_flight = [
        str(p.relative_to(run))
        for p in run.rglob("*")
        if (".tmp-" in p.name or ".old-" in p.name) and staging_root not in p.parents
    ]
    return sorted(staging)[:40], files, sorted(in_flight)[:40]


def _publish(run: Path, stage: str, done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """After train or encode, index: publish what they made, as a pipeline would."""
    if stage in ("train", "encode") and done.returncode == 0:
        return _run(_cli(run, "index"))
    return done


_ARTIFACT_DIRS = ("model", "store", "index", "clusters", "models", "generations", "quarantine", "configs")


def _in_flight_names(run: Path) -> set[str]:
    """Top-level and artifact-directory entries named like an atomic write or a swap in progress."""
    names = set()
    for folder in (run, *(run / d for d in _ARTIFACT_DIRS)):
        try:
            with os.scandir(folder) as entries:
                names |= {f"{folder.name}/{e.name}" for e in entries if ".tmp-" in e.name or ".old-" in e.name}
        except OSError:
            continue
    return names


def _writing(run: Path, before: set[str]) -> bool:
    """Whether a stage is visibly writing: anything under RUN/.staging, or a ``.tmp-``/``.old-``
    entry at the run's top level or directly in its artifact directories that was not there when
    the process started (``before``: a killed writer's leftovers are not this one's writes; the
    next lock holder removes them). A cheap scan, for polling; _snapshot is the full one."""
    staging = run / ".staging"
    if staging.is_dir() and any(staging.iterdir()):
        return True
    return bool(_in_flight_names(run) - before)


def calibrate(run: Path, stage: str) -> tuple[float, float, float | None, list[str]]:
    """One unkilled run of ``stage``: (lock taken -> released, lock taken -> exit, lock taken -> the
    first sign of writing (None: never seen), problems)."""
    args = _stage_args(stage, -1)
    before = _in_flight_names(run)
    proc = _start(run, args)
    taken = _wait_for_lock(proc, run)
    released = writes = None
    while proc.poll() is None:  # watch for writes and the release (the holder truncates .lock) until the exit
        if taken is not None and released is None:
            if writes is None and _writing(run, before):
                writes = time.monotonic()
            if _lock_pid(run) != proc.pid:
                released = time.monotonic()
        time.sleep(POLL_S)
    exited = time.monotonic()
    if taken is None or proc.returncode:
        raise RuntimeError(f"calibration run of {stage} exited {proc.returncode} (lock seen: {taken is not None})")
    done = _publish(run, stage, subprocess.CompletedProcess(args, 0))
    problems = [f"publishing exited {done.returncode}: {done.stderr.strip()[-300:]}"] if done.returncode else []
    problems += check_run(run)[0]
    writes_s = writes - taken if writes is not None else None
    return (released or exited) - taken, exited - taken, writes_s, [f"calibration: {p}" for p in problems]


def calibrate_median(run: Path, stage: str, runs: int) -> tuple[float, float, float | None, list[str]]:
    """``calibrate`` ``runs`` times; the median of each time (one run's timing moved 3x on a shared machine)."""
    results = [calibrate(run, stage) for _ in range(runs)]
    writes = [r[2] for r in results if r[2] is not None]
    return (
        statistics.median(r[0] for r in results),
        statistics.median(r[1] for r in results),
        statistics.median(writes) if writes else None,
        [p for r in results for p in r[3]],
    )


def kill_and_rerun(run: Path, stage: str, kills: int, rng: random.Random, calibrations: int = 3) -> Row:
    row = Row(f"SIGKILL during {stage}, then rerun")
    duration, exit_s, writes_s, row.problems = calibrate_median(run, stage, calibrations)
    writes = f"first writes seen {writes_s:.2f} s" if writes_s is not None else "no writes seen"
    print(
        f"{stage}: holds the lock {duration:.2f} s ({writes}), exits {exit_s:.2f} s after taking it",
        file=sys.stderr,
        flush=True,
    )
    row.calibrated_s, row.calibrated_exit_s = round(duration, 3), round(exit_s, 3)
    row.calibrated_writes_s = round(writes_s, 3) if writes_s is not None else None
    for case in range(kills):
        args = _stage_args(stage, case)
        u = rng.uniform(0.0, U_MAX)
        aimed = case % 2 == 1 and writes_s is not None and writes_s < duration
        if aimed:  # every other kill inside the writing window: first write seen -> release
            u = (writes_s + rng.uniform(0.0, 1.0) * (duration - writes_s)) / duration
        before, current = _generations(run), _current_generation(run)
        proc = _start(run, args)
        taken = _wait_for_lock(proc, run)
        holding = False
        if taken is None:  # exited without being seen holding the lock: nothing to kill
            proc.wait()
            after = None
        else:
            try:
                proc.wait(timeout=max(0.0, taken + u * duration - time.monotonic()))
            except subprocess.TimeoutExpired:
                holding = _lock_pid(run) == proc.pid
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
            after = time.monotonic() - taken
        missed = proc.returncode != -signal.SIGKILL
        staging, staging_files, in_flight = _snapshot(run)
        kill = Kill(
            case=case,
            u=round(u, 4),
            aimed=aimed,
            planned_s=round(u * duration, 3),
            after_lock_s=round(after, 3) if after is not None else None,
            holding=holding and not missed,
            missed=missed,
            exit_code=proc.returncode,
            staging=staging,
            staging_files=staging_files,
            in_flight=in_flight,
            new_generations=sorted(_generations(run) - before),
            published=_current_generation(run) != current,
        )
        if missed and proc.returncode:
            kill.problems.append(f"exited {proc.returncode} by itself (not killed)")
        landed = (
            "missed (had exited)"
            if missed
            else f"killed {kill.after_lock_s:.2f} s after the lock{'' if kill.holding else ', past its release'}"
        )
        print(
            f"{stage} case {case}: u={u:.2f} {landed}; staging {kill.staging_files} files {kill.staging[:4]}, "
            f"in flight {kill.in_flight[:3]}, new generations {kill.new_generations}",
            file=sys.stderr,
            flush=True,
        )
        rerun = _publish(run, stage, _run(_cli(run, *args)))
        kill.rerun_exit = rerun.returncode
        if rerun.returncode:
            kill.problems.append(f"rerun exited {rerun.returncode}: {rerun.stderr.strip()[-300:]}")
        more, lost = check_run(run)
        kill.problems += more
        row.cases += 1
        row.misses += missed
        row.kills += kill.holding
        row.after_release += not (missed or kill.holding)
        row.lost_items += lost
        row.landed.append(kill)
        if kill.problems:
            row.problems += [f"case {case}: {p}" for p in kill.problems]
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


def torture(workdir: Path, kills: int, writers: int, seed: int, calibrations: int = 3) -> list[Row]:
    run = workdir / "run"
    setup = _run(
        [sys.executable, "-m", "aepipe.cli", "run", "--no-prefect", "--run-dir", str(run)]
        + [a for o in BASE for a in ("--set", o)]
    )
    if setup.returncode:
        raise RuntimeError(f"setup run failed: {setup.stderr[-2000:]}")
    rng = random.Random(seed)
    rows = [kill_and_rerun(run, stage, kills, rng, calibrations) for stage in STAGES]
    rows.append(concurrent_writers(run, writers, max(1, kills // 3)))
    return rows


def table(rows: list[Row]) -> str:
    lines = [
        "| fault | cases | kills: lock held | kills: past the release | misses (had exited) | survived "
        "| lost or corrupted items |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        kills = (r.kills, r.after_release, r.misses) if r.calibrated_s is not None else ("-", "-", "-")
        lines.append(f"| {r.fault} | {r.cases} | {' | '.join(map(str, kills))} | {r.survived} | {r.lost_items} |")
    return "\n".join(lines)


def _quartiles(values: list[float]) -> str:
    if not values:
        return "-"
    qs = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3
    return f"{min(values):.2f} / {qs[0]:.2f} / {qs[1]:.2f} / {qs[2]:.2f} / {max(values):.2f}"


def landed_table(rows: list[Row]) -> str:
    """Where the kills landed, per stage: only the kills that hit a process holding the lock."""
    lines = [
        "| stage | calibrated: lock held (to exit) s | first write seen s | u of the kills: min / q1 / median / q3 / max "
        "| s after the lock (median) | aimed at the writes | after the first write | saw .staging files "
        "| saw .tmp-/.old- | new generation dir | published |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.calibrated_s is None:
            continue
        hit = [k for k in r.landed if k.holding]
        n = len(hit)
        median = f"{statistics.median(k.after_lock_s for k in hit):.2f}" if hit else "-"
        writes = r.calibrated_writes_s
        lines.append(
            f"| {r.fault.split()[2].rstrip(',')} | {r.calibrated_s:.2f} ({r.calibrated_exit_s:.2f}) "
            f"| {'-' if writes is None else f'{writes:.2f}'} | {_quartiles([k.u for k in hit])} | {median} "
            f"| {sum(k.aimed for k in hit)}/{n} "
            f"| {'-' if writes is None else f'{sum(k.after_lock_s >= writes for k in hit)}/{n}'} "
            f"| {sum(k.staging_files > 0 for k in hit)}/{n} | {sum(bool(k.in_flight) for k in hit)}/{n} "
            f"| {sum(bool(k.new_generations) for k in hit)}/{n} | {sum(k.published for k in hit)}/{n} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.torture", description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs per stage (default 20; CI: 3)")
    p.add_argument("--writers", type=int, default=10, help="writers started together (2-10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calibrations", type=int, default=3, help="unkilled runs per stage; their median times (CI: 1)")
    p.add_argument("--out", help="write torture.json and RESULTS-torture.md here")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="aepipe-torture-") as tmp:
        rows = torture(Path(tmp), args.kills, args.writers, args.seed, args.calibrations)
    seconds = time.perf_counter() - t0
    text = (
        f"{table(rows)}\n\nWhere the kills landed (the kills that hit the lock holder; u: the fraction of the "
        f"calibrated lock hold time; first write seen: when the calibration run's first .staging or .tmp-/.old- "
        f"entry appeared; every record in torture.json):\n\n{landed_table(rows)}"
    )
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
