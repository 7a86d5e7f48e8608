"""Multi-process (DDP) training in a dedicated entrypoint:

    python -m aepipe.model.ddp --config RUN_CONFIG.yaml [--result RESULT.json]

Lightning's ``ddp`` strategy starts ranks 1..N-1 by re-running the command that started
rank 0. Inside a Prefect task (or ``aepipe run``) that command is the flow or the serve
process, which must not run again; so :func:`aepipe.model.train.train_model` starts *this* module as
rank 0 in a subprocess, and Lightning re-runs this entrypoint for the other ranks. Every rank
reads the same config, so all agree on the paths; only global rank 0 writes the model
directory and the result file.

Several machines (``training.num_nodes`` > 1): start this entrypoint once per machine with
``MASTER_ADDR``, ``MASTER_PORT`` and ``NODE_RANK`` set (or under ``torchrun``/SLURM), on a run
directory every machine can reach; see infra/README.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from aepipe.config import PipelineConfig, TrainingConfig, dump_config, load_config
from aepipe.errors import AepipeError, TrainingError
from aepipe.files import atomic_write_json
from aepipe.logs import setup_logging
from aepipe.model.device import resolve_device
from aepipe.model.fit import TrainResult, fit_model

log = logging.getLogger(__name__)


def devices_per_node(tc: TrainingConfig) -> int | None:
    """Processes Lightning starts per machine for ``training.devices``; None when only the
    machine knows (``-1`` / ``auto`` on an accelerator: all of its devices)."""
    if tc.strategy == "single_device":
        return 1
    devices = tc.devices
    if isinstance(devices, str):
        text = devices.strip().strip("[]")
        if text == "auto":
            return 1 if resolve_device(tc).accelerator == "cpu" else None
        if "," in text:
            return len([d for d in text.split(",") if d.strip()])
        devices = int(text) if text.lstrip("-").isdigit() else 1
    return None if devices < 0 else max(devices, 1)


def needs_launcher(tc: TrainingConfig) -> bool:
    """True when training would start more than one process (DDP and friends)."""
    return tc.num_nodes > 1 or devices_per_node(tc) != 1


def inside_launched_job() -> bool:
    """True in a process that a distributed launcher started as one rank (torchrun, Lightning's
    launcher, this entrypoint's children): train there, do not launch again."""
    return "WORLD_SIZE" in os.environ and ("LOCAL_RANK" in os.environ or "RANK" in os.environ)


def train_in_subprocess(cfg: PipelineConfig) -> TrainResult:
    """Run :func:`fit_model` as ``python -m aepipe.model.ddp`` and return rank 0's result.

    The subprocess (and the ranks it starts) gets its own process group, so that a cancelled
    flow run or an interrupt stops every rank. Its output is forwarded line by line to this
    module's logger (and so into Prefect's flow-run logs when aepipe is an extra logger)."""
    with tempfile.TemporaryDirectory(prefix="aepipe-ddp-") as tmp:
        cfg_path, result_path = Path(tmp) / "config.yaml", Path(tmp) / "result.json"
        cfg_path.write_text(dump_config(cfg))
        cmd = [sys.executable, "-m", "aepipe.model.ddp", "--config", str(cfg_path), "--result", str(result_path)]
        tc = cfg.training
        log.info(
            "training with %s devices x %d node(s), strategy %s, in a subprocess: %s",
            tc.devices,
            tc.num_nodes,
            tc.strategy,
            " ".join(cmd),
        )
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        last_error = ""
        try:
            for line in proc.stdout or ():
                log.info("%s", line.rstrip())
                if line.startswith("aepipe: error:"):
                    last_error = line.strip()
            status = proc.wait()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait()
        if status != 0 or not result_path.is_file():
            raise TrainingError(
                f"DDP training (python -m aepipe.model.ddp) exited with status {status}"
                f"{': ' + last_error if last_error else ''}; its output is in the log lines above"
            )
        return TrainResult(**json.loads(result_path.read_text()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aepipe.model.ddp", description="Train one rank of a (multi-process) aepipe training job."
    )
    parser.add_argument("--config", required=True, help="resolved config YAML (every rank reads the same)")
    parser.add_argument("--result", help="rank 0 writes the TrainResult here as JSON")
    args = parser.parse_args(argv)
    rank = f"node {os.environ.get('NODE_RANK', '0')} rank {os.environ.get('LOCAL_RANK', '0')}"
    setup_logging(1, prefix=f" [{rank}]")  # INFO: the parent forwards these lines into its own log
    try:
        result = fit_model(load_config(args.config))
    except AepipeError as exc:
        print(f"aepipe: error: {exc}", file=sys.stderr)
        return 2
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) == 0 and args.result:  # set to the global rank by Lightning's strategy
        atomic_write_json(Path(args.result), asdict(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
