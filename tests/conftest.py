"""Shared fixtures: one small model trained on scikit-learn's digits, reused by the
store / index / search / cluster tests, and a Prefect test harness for flow tests.

Environment first: Prefect reads its settings when it is imported, so PREFECT_HOME
and the server start-up timeout are set here, before any test module imports it.
One intra-op thread: on a small shared CPU, torch's default thread pool spins and
makes tiny models ~10x slower.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# Processes the tests start (decode workers, DDP ranks, CLI subprocesses) import this module
# too: they share the test session's Prefect home instead of each leaving one of their own in
# /tmp (a worker killed on purpose never runs its atexit).
_PREFECT_HOME = os.environ.get("AEPIPE_TESTS_PREFECT_HOME") or tempfile.mkdtemp(prefix="aepipe-tests-prefect-")
if "AEPIPE_TESTS_PREFECT_HOME" not in os.environ:
    os.environ["AEPIPE_TESTS_PREFECT_HOME"] = _PREFECT_HOME
    atexit.register(shutil.rmtree, _PREFECT_HOME, True)
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("OMP_NUM_THREADS", "1")

import io  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

torch.set_num_threads(1)

from aepipe.config import PipelineConfig, build_config  # noqa: E402

# The shared model: small, but trained long enough to beat the mean image and to
# separate digit classes clearly (about 2-3 s on one CPU thread).
TRAINED_OVERRIDES = [
    "corpus.source=digits",
    "corpus.limit=400",
    "model.n_layers=2",
    "model.nodes_per_layer=[64, 32]",
    "model.code_size=10",
    "training.max_epochs=40",
    "training.batch_size=64",
    "training.lr=0.01",
    "index.n_eval_queries=1000",  # > N: every stored item is an eval query
]

# Tiny settings for tests that train their own throwaway model.
QUICK_OVERRIDES = [
    "model.n_layers=1",
    "model.nodes_per_layer=[16]",
    "model.code_size=4",
    "training.max_epochs=1",
    "training.batch_size=32",
]


@dataclass
class TrainedRun:
    overrides: list[str]
    run_dir: Path
    model_id: str
    n_items: int

    def config(self, *extra: str, run_dir: Path | None = None) -> PipelineConfig:
        return build_config(overrides=[*self.overrides, f"run_dir={run_dir or self.run_dir}", *extra])


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> TrainedRun:
    """Train, encode and index ONE model on 400 digits. Read-only: copy it to mutate."""
    from aepipe.codes.encode import encode_corpus
    from aepipe.model.train import train_model
    from aepipe.pipeline import index_stage

    run_dir = tmp_path_factory.mktemp("trained") / "run"
    cfg = build_config(overrides=[*TRAINED_OVERRIDES, f"run_dir={run_dir}"])
    trained = train_model(cfg)
    encoded = encode_corpus(cfg)
    index_stage(cfg)  # builds the index and publishes the model version, as the pipeline does
    assert encoded.model_id == trained.model_id
    return TrainedRun(list(TRAINED_OVERRIDES), run_dir, trained.model_id, encoded.n_items)


@pytest.fixture
def run_copy(trained_run, tmp_path) -> TrainedRun:
    """A private copy of the trained run directory, safe to modify."""
    dst = tmp_path / "run"
    shutil.copytree(trained_run.run_dir, dst)
    return TrainedRun(trained_run.overrides, dst, trained_run.model_id, trained_run.n_items)


@pytest.fixture(scope="session")
def digits_x() -> np.ndarray:
    """All of scikit-learn's digits as model inputs: (1797, 1, 8, 8) float32 in [0, 1]."""
    from sklearn.datasets import load_digits

    return (load_digits().images.astype(np.float32) / 16.0)[:, None]


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect API server and database, started once, for the flow tests only."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=None):  # None: use the env timeout above
        yield


def png_bytes(arr: np.ndarray) -> bytes:
    """Encode a uint8 array (H, W) or (H, W, 3) as PNG."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def write_png():
    def _write(path: Path, arr: np.ndarray) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(arr))
        return path

    return _write


def pytest_configure(config):
    # Lightning's advice for real training runs (log intervals, dataloader workers) is noise here.
    config.addinivalue_line("filterwarnings", "ignore::UserWarning:lightning")
    config.addinivalue_line("filterwarnings", "ignore:.*treespec.*")
