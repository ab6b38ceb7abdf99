"""runtime: device, precision and the CPU-thread decision (from injected CPU samples, not live load)."""

import pytest
import torch

from vitkit import runtime as R
from vitkit.errors import ConfigError


def window(cores: int, others: float, own: float = 0.0, ticks: int = 100) -> tuple[R.CpuSample, R.CpuSample]:
    """Two samples ``ticks`` per core apart, in which other programs kept ``others`` cores busy and
    this job ``own`` cores."""
    before = R.CpuSample(busy=1000, total=5000, own=300)
    after = R.CpuSample(
        busy=before.busy + round((others + own) * ticks),
        total=before.total + cores * ticks,
        own=before.own + round(own * ticks),
    )
    return before, after


def test_an_idle_machine_gets_every_core():
    threads, why = R.threads_from_samples(*window(2, others=0.05), cores=2)
    assert threads == 2 and why.startswith("all 2 core(s)")


def test_a_core_kept_busy_by_another_program_is_left_to_it_and_the_log_says_why():
    threads, why = R.threads_from_samples(*window(2, others=0.95), cores=2)
    assert threads == 1 and "other programs kept 0.95 core(s) busy" in why and "--threads" in why
    assert R.threads_from_samples(*window(2, others=0.4), cores=2)[0] == 2  # under half a core: not contention
    assert R.threads_from_samples(*window(2, others=2.0), cores=2)[0] == 1  # never fewer than one


def test_the_jobs_own_processes_are_not_contention():
    # two torchrun workers on 4 cores, busy loading data during the window: all 4 cores are theirs
    threads, why = R.threads_from_samples(*window(4, others=0.0, own=3.5), cores=4, processes=2)
    assert threads == 2 and "shared by 2 processes" in why
    assert R.threads_from_samples(*window(4, others=1.0, own=2.0), cores=4, processes=2)[0] == 1  # 3 free / 2


def test_samples_read_the_allowed_cpus_and_count_steal_as_busy(tmp_path):
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text(
        "cpu  300 0 30 300 0 0 0 30 0 0\ncpu0 100 0 10 100 0 0 0 10 0 0\ncpu1 200 0 20 200 0 0 0 20 0 0\nintr 1 2 3\n"
    )
    s = R.sample_cpu([1], own_pids=[], stat=stat)
    assert s == R.CpuSample(busy=240, total=440, own=0)
    assert R.sample_cpu([0, 1], own_pids=[], stat=tmp_path / "missing") is None
    assert R.sample_cpu([0], own_pids=[-1], stat=stat).own == 0  # a process that has gone counts nothing


def test_set_threads_takes_an_explicit_count_and_refuses_zero():
    before = torch.get_num_threads()
    try:
        assert R.set_threads(1) == 1 and torch.get_num_threads() == 1
        with pytest.raises(ConfigError, match="--threads 0"):
            R.set_threads(0)
    finally:
        torch.set_num_threads(before)


def test_device_and_precision_choices():
    assert R.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="not a device"):
        R.resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            R.resolve_device("cuda")
    assert R.use_bf16("bf16", torch.device("cpu")) and not R.use_bf16("fp32", torch.device("cpu"))
    assert R.use_bf16("auto", torch.device("cpu")) == R.cpu_has_bf16()
    with pytest.raises(ConfigError, match="choose auto, bf16 or fp32"):
        R.use_bf16("fp16", torch.device("cpu"))


def test_available_cores_is_the_affinity_or_else_every_core(monkeypatch):
    import os

    assert R.available_cores() == len(os.sched_getaffinity(0))
    monkeypatch.delattr(os, "sched_getaffinity")  # macOS, Windows
    assert R.available_cores() == (os.cpu_count() or 1)
    assert R.default_threads()[0] == (os.cpu_count() or 1)


def test_the_attention_path_rule_and_who_may_override_it(tmp_path):
    """CPU training under bf16 takes the explicit path; fp32 training, CPU inference and CUDA the
    fused kernel (the measured rule of benchmarks/attention_path.py). A training run applies it
    only where neither ``--set fused_attention=...`` nor the recipe chose, and the saved config
    keeps the preset's."""
    from conftest import TINY, tiny_config

    from vitkit import create_model
    from vitkit.train.loop import _choose_attention_path

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [R.attention_path(cpu, True, bf16)[0] for bf16 in (True, False)] == [False, True]
    assert R.attention_path(cpu, False, True)[0] and R.attention_path(cuda, True, True)[0]

    def paths(overrides: dict) -> set[bool]:
        model = create_model("vit_tiny_28", **TINY)
        _choose_attention_path(model, tiny_config(tmp_path, model_overrides=overrides), cpu, bf16=True)
        assert model.config.fused_attention  # the preset's, as saved
        return {block.attn.fused for block in model.blocks}

    assert paths(TINY) == {False}
    assert paths(TINY | dict(fused_attention=True)) == {True}
