"""Training sized to a wall-clock budget: ``training.max_time_minutes`` (``auto`` by default).

A hard stop alone (Lightning's ``max_time``) cuts the learning-rate schedule short: a one-cycle
run stopped half-way ends at its peak rate. So before fitting, a few optimizer steps of a copy of
the network are timed on real training batches, and the run is planned to end inside the budget:
``max_steps`` (and the ``min_steps`` floor) lowered to what fits, the schedule spanning those
steps. The hard stop stays as the backstop (regularisers the probe leaves out, a busier machine).

``auto``: 2 minutes for corpora up to 12,000 items, then 10 minutes per 60,000 items, at most 60
(the issue's targets: under 2 minutes for small corpora, 10 per 60,000 28x28 images on 2 cores).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from aepipe.config import TrainingConfig
from aepipe.model.module import reconstruction_loss
from aepipe.model.networks import Autoencoder

log = logging.getLogger(__name__)

# Share of the budget kept back for what follows the fit (held-out evaluation, PCA/LSA baseline,
# saving), and the planning margin on the probe's step time (data loading, validation passes, logging).
RESERVE = 0.15
# Lightning's own work per step (data loading, logging, the validation pass each epoch) on top of a
# bare step: mnist20k's fit ran 23.7 ms a step where bare steps took 16.3 ms (1.45x).
STEP_MARGIN = 1.5
WARMUP_STEPS = 2  # the first steps allocate and warm caches (34 ms, then ~16 ms, on mnist's network)
# Timed steps: at least PROBE_MIN_STEPS (and min_seconds of them, at most PROBE_MAX_STEPS), the
# median taken. Five steps of 30 ms once read 0.59 s a step during a burst of load on a shared
# machine (the fit then ran at 0.12 s) and cut a 25-epoch MNIST run to 4; so when the quick probe
# says the budget binds, the plan is made on a probe of PROBE_SECONDS, where a stall has to last
# half the probe to move it.
PROBE_MIN_STEPS = 5
PROBE_SECONDS = 3.0
PROBE_MAX_STEPS = 200


def budget_minutes(tc: TrainingConfig, n_items: int) -> float | None:
    """The training stage's wall-clock budget in minutes (None: unlimited)."""
    if tc.max_time_minutes is None:
        return None
    if tc.max_time_minutes == "auto":
        return float(min(60.0, max(2.0, 10.0 * n_items / 60_000)))
    return float(tc.max_time_minutes)


@dataclass(frozen=True)
class StepPlan:
    """What fits in what is left of the budget."""

    minutes: float  # the training stage's budget
    seconds_left: float  # the hard stop for the fit
    step_s: float | None  # measured seconds per optimizer step (None: not probed)
    max_steps: int | None  # None: the budget does not bind


def probe_step_seconds(
    net: Autoencoder,
    x: np.ndarray,
    rows: np.ndarray,
    batch_size: int,
    loss: str,
    device: str,
    min_seconds: float = 0.0,
) -> float:
    """Median seconds of one optimizer step (forward, reconstruction loss, backward, AdamW) of a copy
    of ``net`` on batches drawn from ``x[rows]`` (x: (N, ...)), after ``WARMUP_STEPS``, over at
    least ``PROBE_MIN_STEPS`` steps and ``min_seconds`` (at most ``PROBE_MAX_STEPS`` steps); ``net``
    is left untouched."""
    probe = copy.deepcopy(net).to(device).train()
    opt = torch.optim.AdamW([p for p in probe.parameters() if p.requires_grad], lr=1e-6)
    rng = np.random.default_rng(0)
    times: list[float] = []
    for i in range(WARMUP_STEPS + PROBE_MAX_STEPS):
        if len(times) >= PROBE_MIN_STEPS and sum(times) >= min_seconds:
            break
        idx = np.sort(rng.choice(rows, min(batch_size, len(rows)), replace=False))
        xb = torch.from_numpy(np.ascontiguousarray(x[idx])).to(device)
        t = time.perf_counter()
        out = probe(xb).out
        reconstruction_loss(out, xb, loss, probe).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= WARMUP_STEPS:
            times.append(time.perf_counter() - t)
    return float(np.median(times))


def plan_steps(
    tc: TrainingConfig,
    n_items: int,
    elapsed_s: float,
    planned_steps: int,
    step_s: float | None,
) -> StepPlan | None:
    """The plan for a fit that would run ``planned_steps`` optimizer steps, ``elapsed_s`` into the
    training stage; None without a budget. ``step_s`` None: only the hard stop."""
    minutes = budget_minutes(tc, n_items)
    if minutes is None:
        return None
    budget_s = minutes * 60
    left = max(budget_s * (1 - RESERVE) - elapsed_s, budget_s * 0.1)  # always some training
    if step_s is None or step_s <= 0:
        return StepPlan(minutes, left, None, None)
    fits = max(int(left / (step_s * STEP_MARGIN)), 1)
    return StepPlan(minutes, left, step_s, fits if fits < planned_steps else None)


def planned_steps(tc: TrainingConfig, epochs: int, n_train: int) -> int:
    """Optimizer steps the fit would run without a budget (one process)."""
    per_epoch = max(math.ceil(n_train / tc.batch_size), 1)
    steps = epochs * per_epoch
    return min(steps, tc.max_steps) if tc.max_steps else steps


def overestimated(plan: StepPlan | None, steps_run: int, fit_s: float) -> str | None:
    """A warning when the plan cut the steps but the fit ran them in under half the time it had
    (the machine was busier while probing than while training); None otherwise."""
    if plan is None or plan.max_steps is None or plan.step_s is None or steps_run < plan.max_steps:
        return None
    if fit_s >= plan.seconds_left / 2:
        return None
    return (
        f"the time budget planned {plan.max_steps} steps at {plan.step_s:.3f} s a step, and the fit ran them at "
        f"{fit_s / max(steps_run, 1):.3f} s a step in {fit_s:.0f} s of the {plan.seconds_left:.0f} s it had: the "
        "machine was busier while the steps were timed; rerun, or set training.max_steps or "
        "training.max_time_minutes=null to train every planned step"
    )
