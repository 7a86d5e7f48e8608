"""Progress for scheduled jobs: one line per epoch off a terminal, kept at the default verbosity."""

from __future__ import annotations

import logging

import pytest

from aepipe.config import build_config
from aepipe.logs import setup_logging
from aepipe.model.progress import epoch_line, format_duration
from aepipe.model.train import train_model


def test_epoch_line_and_durations():
    line = epoch_line(3, 60, {"train_loss": 0.123456, "val_loss": 0.1}, 12.4, 185.0)
    assert line == "epoch 3/60: loss 0.1235, val loss 0.1, elapsed 12s, ETA 3m05s"
    assert epoch_line(1, 1, {}, 0.2, 0.0) == "epoch 1/1: elapsed 0s, ETA 0s"
    assert format_duration(3725) == "1h02m"


def test_training_off_a_terminal_logs_one_line_per_epoch(tmp_path, caplog):
    from tests.conftest import QUICK_OVERRIDES

    cfg = build_config(
        overrides=[
            *QUICK_OVERRIDES,
            "corpus.source=digits",
            "corpus.limit=200",
            "training.max_epochs=3",
            f"run_dir={tmp_path / 'run'}",
        ]
    )
    with caplog.at_level(logging.INFO, logger="aepipe.progress"):
        train_model(cfg)  # pytest captures stderr: not a terminal
    lines = [r.getMessage() for r in caplog.records if r.name == "aepipe.progress"]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert all("loss" in line and "val loss" in line and "ETA" in line for line in lines)


@pytest.fixture
def restore_levels():
    names = ["aepipe", "aepipe.progress", "httpx", "faiss.loader"]
    before = {n: logging.getLogger(n).level for n in names}
    yield
    for n, level in before.items():
        logging.getLogger(n).setLevel(level)


def test_progress_stays_at_info_when_aepipe_logs_only_warnings(restore_levels):
    assert setup_logging(0, stream_is_tty=False) == logging.WARNING
    assert logging.getLogger("aepipe.progress").getEffectiveLevel() == logging.INFO
    assert logging.getLogger("httpx").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("faiss.loader").getEffectiveLevel() == logging.WARNING
    setup_logging(2, stream_is_tty=False)
    assert logging.getLogger("aepipe.progress").getEffectiveLevel() == logging.DEBUG


def test_epoch_lines_count_to_where_max_steps_ends_training(tmp_path, caplog):
    """A step limit (the time budget's plan, or training.max_steps) that ends training before
    max_epochs: the lines count epochs out of what will run, so the ETA is not 5x too long."""
    from tests.conftest import QUICK_OVERRIDES

    cfg = build_config(
        overrides=[
            *QUICK_OVERRIDES,
            "corpus.source=digits",
            "corpus.limit=200",  # 160 training items at batch 32: 5 steps an epoch
            "training.max_epochs=10",
            "training.max_steps=10",
            f"run_dir={tmp_path / 'run'}",
        ]
    )
    with caplog.at_level(logging.INFO, logger="aepipe.progress"):
        train_model(cfg)
    lines = [r.getMessage() for r in caplog.records if r.name == "aepipe.progress"]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
