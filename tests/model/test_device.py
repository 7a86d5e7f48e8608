"""training.accelerator / precision ``auto``: resolved without a GPU by passing what the probes would say."""

from __future__ import annotations

from aepipe.config import TrainingConfig
from aepipe.model.ddp import needs_launcher
from aepipe.model.device import Device, resolve_device


def test_auto_is_the_default_and_means_cpu_float32_without_cuda():
    tc = TrainingConfig()
    assert tc.accelerator == "auto" and tc.precision == "auto"
    assert resolve_device(tc, cuda=False) == Device("cpu", "32-true")


def test_auto_picks_the_gpu_with_a_precision_it_supports():
    tc = TrainingConfig()
    assert resolve_device(tc, cuda=True, bf16=True) == Device("gpu", "bf16-mixed")
    assert resolve_device(tc, cuda=True, bf16=False) == Device("gpu", "16-mixed")


def test_explicit_choices_are_kept():
    assert resolve_device(TrainingConfig(accelerator="cpu"), cuda=True, bf16=True) == Device("cpu", "32-true")
    assert resolve_device(TrainingConfig(precision="32-true"), cuda=True, bf16=True) == Device("gpu", "32-true")
    assert resolve_device(TrainingConfig(accelerator="gpu", precision="16-mixed"), cuda=False).precision == "16-mixed"


def test_auto_devices_on_a_cpu_machine_start_one_process():
    tc = TrainingConfig(devices="auto")
    if resolve_device(tc).accelerator == "cpu":
        assert not needs_launcher(tc)
