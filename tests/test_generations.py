"""Generations: a reader (a thread and a separate process) querying in a loop through a retrain +
re-encode + re-index and through an update gets zero failures, every answer from one consistent
generation; old generations go only after the grace period."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from aepipe.codes.encode import encode_corpus
from aepipe.codes.store import open_store
from aepipe.files import read_json
from aepipe.generations import list_generations, prune_generations, publish_generation
from aepipe.index.search import Searcher
from aepipe.layout import RunLayout
from aepipe.model.train import train_model
from aepipe.pipeline import index_stage
from aepipe.update import update_run

READER = """
import json, sys, threading
from aepipe.index.search import Searcher
run, probe = sys.argv[1], sys.argv[2]
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
s = Searcher(run)
answers, failures, gens, inconsistent = 0, [], set(), 0
print("ready", flush=True)
while not stop.is_set():
    try:
        s.refresh()
        hits = s.search_ids([probe], k=5)[0]
        store_model = s._store_checked().model_id
        if not (len(hits) == 5 and store_model == s.model_id == s.model.model_id):
            inconsistent += 1
        answers += 1
        gens.add(s.generation.name)
    except Exception as exc:
        failures.append(repr(exc)[:300])
print(json.dumps({"answers": answers, "failures": failures[:5], "n_failures": len(failures),
                  "generations": sorted(gens), "inconsistent": inconsistent}), flush=True)
"""


def _thread_reader(run, probe, stop, out):
    s = Searcher(run)
    out.update(answers=0, failures=[], generations=set(), inconsistent=0)
    while not stop.is_set():
        try:
            s.refresh()
            hits = s.search_ids([probe], k=5)[0]
            # one generation: its index, store and model come from the same model
            if not (len(hits) == 5 and s._store_checked().model_id == s.model_id == s.model.model_id):
                out["inconsistent"] += 1
            out["answers"] += 1
            out["generations"].add(s.generation.name)
        except Exception as exc:  # noqa: BLE001  every failure is counted, none may happen
            out["failures"].append(repr(exc))


@pytest.mark.slow
def test_readers_never_fail_through_a_retrain_and_an_update(run_copy):
    run = run_copy.run_dir
    probe = "0007"
    first = RunLayout.at(run).current_generation_name()
    assert first is not None  # the fixture's index stage published one
    proc = subprocess.Popen(
        [sys.executable, "-c", READER, str(run), probe], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "ready"
    stop, out = threading.Event(), {}
    thread = threading.Thread(target=_thread_reader, args=(run, probe, stop, out))
    thread.start()
    try:
        cfg = run_copy.config("training.seed=7", "training.max_epochs=3")  # a different model
        trained = train_model(cfg)
        assert trained.model_id != run_copy.model_id
        encode_corpus(cfg)  # the store now holds the new model's codes; the index is still the old one's
        index_stage(cfg)
        update_run(run_copy.config("corpus.limit=430"))  # 30 more items into store and index
    finally:
        stop.set()
        thread.join()
        stdout, _ = proc.communicate("", timeout=120)
    other = json.loads(stdout.strip().splitlines()[-1])
    for who, r in (("thread", out), ("process", other)):
        n_failed = r.get("n_failures", len(r["failures"]))
        print(f"reader {who}: {r['answers']} answers, {n_failed} failures, generations {sorted(r['generations'])}")
    for result in (out, other):
        assert result["failures"] == [] and result.get("n_failures", 0) == 0
        assert result["answers"] > 0 and result["inconsistent"] == 0
    gens = list_generations(RunLayout.at(run))
    assert len(gens) >= 3 and RunLayout.at(run).current_generation_name() == gens[-1]
    s = Searcher(run)
    assert s.index.ntotal == 430 and open_store(s.generation.store).n_items == 430
    assert s.model_id == trained.model_id


def test_a_pinned_searcher_keeps_its_generation_until_refresh(run_copy):
    run = run_copy.run_dir
    s = Searcher(run)
    pinned = s.generation.name
    update_run(run_copy.config("corpus.limit=410"))
    assert s.generation.name == pinned and s.index.ntotal == 400
    assert len(s.search_ids(["0001"], k=3)[0]) == 3  # still answers from its own files
    assert s.refresh() and s.generation.name != pinned and s.index.ntotal == 410
    assert not s.refresh()


def test_old_generations_go_only_after_the_grace_period(run_copy):
    layout = RunLayout.at(run_copy.run_dir)
    for _ in range(3):
        publish_generation(layout, keep=1, grace_s=3600)
    names = list_generations(layout)
    assert len(names) == 4  # all still within the grace period
    published = read_json(layout.current_generation)["published"]
    removed = prune_generations(layout, keep=1, grace_s=3600, now=published + 7200)
    assert removed == names[:-1] and list_generations(layout) == names[-1:]
    assert layout.current().name == names[-1]
    assert Searcher(run_copy.run_dir).search_ids(["0001"], k=2)[0]


def test_layout_current_resolves_the_published_generation(run_copy, tmp_path):
    layout = RunLayout.at(run_copy.run_dir)
    current = layout.current()
    assert current.root.parent == layout.generations
    assert read_json(current.index.infos)["model_id"] == run_copy.model_id
    assert (current.model.info).is_file() and any(current.store.glob("part-*.parquet"))
    bare = RunLayout.at(tmp_path / "new-run").current()  # nothing published: the working artifacts
    assert bare.store == tmp_path / "new-run" / "store" and bare.name is None
