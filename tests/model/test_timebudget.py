"""Training sized to a wall-clock budget (training.max_time_minutes, auto by default)."""

from __future__ import annotations

import pytest

from aepipe.config import ConfigError, build_config
from aepipe.model import fit as fit_module
from aepipe.model.timebudget import budget_minutes, plan_steps, planned_steps, probe_step_seconds
from aepipe.model.train import train_model


def test_auto_budget_grows_with_the_corpus():
    tc = build_config(overrides=[]).training
    assert tc.max_time_minutes == "auto"
    assert budget_minutes(tc, 400) == 2.0
    assert budget_minutes(tc, 12_000) == 2.0
    assert budget_minutes(tc, 60_000) == pytest.approx(10.0)
    assert budget_minutes(tc, 10_000_000) == 60.0
    assert budget_minutes(build_config(overrides=["training.max_time_minutes=null"]).training, 60_000) is None
    assert budget_minutes(build_config(overrides=["training.max_time_minutes=3"]).training, 10) == 3.0


@pytest.mark.parametrize("bad", ["0", "-1", "soon"])
def test_a_bad_budget_is_refused(bad):
    with pytest.raises(ConfigError, match="max_time_minutes"):
        build_config(overrides=[f"training.max_time_minutes={bad}"])


def test_plan_lowers_steps_only_when_they_do_not_fit():
    tc = build_config(overrides=["training.max_time_minutes=1"]).training  # 60 s, 51 s for the fit
    plan = plan_steps(tc, 1000, 0.0, planned_steps=1500, step_s=0.1)
    assert plan is not None and plan.max_steps == int(60 * 0.85 / (0.1 * 1.5))
    assert plan_steps(tc, 1000, 0.0, planned_steps=100, step_s=0.1).max_steps is None  # 100 steps fit
    later = plan_steps(tc, 1000, 30.0, planned_steps=1500, step_s=0.1)  # half the budget already spent
    assert later.max_steps < plan.max_steps and later.seconds_left == pytest.approx(21.0)
    assert plan_steps(tc, 1000, 0.0, 1500, None).max_steps is None  # not probed (DDP): the hard stop only
    assert plan_steps(build_config(overrides=["training.max_time_minutes=null"]).training, 10, 0, 5, 1.0) is None


def test_overestimate_is_reported_only_when_the_plan_cut_steps_and_they_ran_fast():
    from aepipe.model.timebudget import StepPlan, overestimated

    cut = StepPlan(minutes=1.0, seconds_left=50.0, step_s=0.5, max_steps=66)
    assert "66 steps" in overestimated(cut, steps_run=66, fit_s=10.0)
    assert overestimated(cut, steps_run=66, fit_s=40.0) is None  # the plan was about right
    assert overestimated(cut, steps_run=20, fit_s=10.0) is None  # stopped early (early stopping)
    assert overestimated(StepPlan(1.0, 50.0, 0.01, None), steps_run=100, fit_s=1.0) is None  # nothing cut
    assert overestimated(None, 100, 1.0) is None


def test_planned_steps_counts_epochs_and_max_steps():
    tc = build_config(overrides=["training.batch_size=100"]).training
    assert planned_steps(tc, epochs=10, n_train=250) == 30
    tc = build_config(overrides=["training.batch_size=100", "training.max_steps=7"]).training
    assert planned_steps(tc, epochs=10, n_train=250) == 7


def test_probe_leaves_the_network_untouched():
    import numpy as np
    import torch

    from aepipe.model.networks import DenseAutoencoder

    net = DenseAutoencoder((1, 8, 8), [32], 4, output_activation="sigmoid")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = np.random.default_rng(0).random((50, 1, 8, 8), dtype=np.float32)
    assert probe_step_seconds(net, x, np.arange(10, 50), 16, "mse", "cpu") > 0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_training_stops_at_the_steps_that_fit(tmp_path, monkeypatch, caplog):
    """A slow step (as measured by the probe) on a short budget: the fit runs the planned steps,
    with the lr schedule spanning them, and metrics.json says what was planned; as the real steps
    took milliseconds, a warning says the plan was too cautious."""
    from tests.conftest import QUICK_OVERRIDES

    monkeypatch.setattr(fit_module, "probe_step_seconds", lambda *a, **k: 1.0)  # as if each step took 1 s
    cfg = build_config(
        overrides=[
            *QUICK_OVERRIDES,
            "corpus.source=digits",
            "corpus.limit=300",
            "training.max_epochs=50",
            "training.max_time_minutes=0.5",  # 30 s: 25.5 s for the fit, 17 steps at 1.5 s
            f"run_dir={tmp_path / 'run'}",
        ]
    )
    m = train_model(cfg).metrics
    # (25.5 s less what reading and the PCA start took before the plan) / 1.5 s a step
    assert 10 <= m["time_budget"]["max_steps_fit"] <= 17
    assert m["steps"] == m["time_budget"]["max_steps_fit"]
    assert m["time_budget"]["probe_step_s"] == 1.0
    assert any("machine was busier while the steps were timed" in r.getMessage() for r in caplog.records)


def test_no_budget_runs_every_epoch(tmp_path):
    from tests.conftest import QUICK_OVERRIDES

    cfg = build_config(
        overrides=[
            *QUICK_OVERRIDES,
            "corpus.source=digits",
            "corpus.limit=300",
            "training.max_epochs=3",
            "training.max_time_minutes=null",
            f"run_dir={tmp_path / 'run'}",
        ]
    )
    m = train_model(cfg).metrics
    assert m["time_budget"] is None and m["epochs"] == 3


def test_a_stall_during_the_quick_probe_does_not_cut_the_run(monkeypatch):
    """A burst of load on a shared machine while the first few steps are timed (here: the first five
    timed steps take 0.2 s, every later one a few ms) must not plan a fraction of the steps: when the
    quick probe says the budget binds, the plan is made on a longer probe."""
    import time

    import numpy as np

    from aepipe.model import timebudget
    from aepipe.model.networks import DenseAutoencoder

    calls = {"n": 0}
    real_loss = timebudget.reconstruction_loss

    def stalling_loss(*args, **kwargs):
        calls["n"] += 1
        if timebudget.WARMUP_STEPS < calls["n"] <= timebudget.WARMUP_STEPS + timebudget.PROBE_MIN_STEPS:
            time.sleep(0.2)
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(timebudget, "reconstruction_loss", stalling_loss)
    cfg = build_config(overrides=["training.max_time_minutes=0.2", "training.batch_size=16"])  # 10.2 s to fit
    net = DenseAutoencoder((1, 8, 8), [32], 4, output_activation="sigmoid")
    x = np.random.default_rng(0).random((400, 1, 8, 8), dtype=np.float32)
    plan = fit_module.plan_time_budget(cfg, net, x, np.arange(400), "mse", 400, 0.0, epochs=40)  # 1,000 steps
    assert calls["n"] > timebudget.WARMUP_STEPS + timebudget.PROBE_MIN_STEPS  # the longer probe ran
    assert plan is not None and plan.step_s < 0.1  # a few ms, not the stall's 0.2 s
    assert plan.max_steps is None  # all 1,000 steps fit (with the stall's estimate: about 30)
