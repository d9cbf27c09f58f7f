"""The benchmarks' measuring tools: FLOP counting, interleaved timing, peak memory, options."""

import argparse
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_epoch
import harness
import presets


def test_count_flops_of_a_matmul_is_2mnk() -> None:
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert harness.count_flops(lambda: a @ b) == 2 * 8 * 16 * 4


def test_count_flops_counts_cpu_attention() -> None:
    # (batch, heads, tokens, dim): QK^T and AV, 2 * b*h*s*s*d FLOPs each.
    q = k = v = torch.randn(2, 3, 10, 8)
    flops = harness.count_flops(lambda: F.scaled_dot_product_attention(q, k, v))
    assert flops == 2 * (2 * 2 * 3 * 10 * 10 * 8)


def test_count_flops_counts_cpu_attention_backward() -> None:
    q = torch.randn(2, 3, 10, 8, requires_grad=True)
    k, v = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 10, 8)
    forward = 2 * (2 * 2 * 3 * 10 * 10 * 8)
    flops = harness.count_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward())
    assert flops > forward


def test_time_interleaved_runs_each_contender_warmup_plus_repeats_times() -> None:
    calls = {"a": 0, "b": 0}

    def bump(name: str) -> None:
        calls[name] += 1

    timings = harness.time_interleaved(
        {"a": lambda: bump("a"), "b": lambda: bump("b")},
        torch.device("cpu"),
        repeats=3,
        warmup=2,
    )
    assert calls == {"a": 5, "b": 5}
    assert len(timings.seconds["a"]) == len(timings.cpu_seconds["b"]) == 3
    assert set(timings.ratios("a", "b")) == {"median", "min", "cpu_median"}


@pytest.mark.parametrize(("repeats", "warmup"), [(0, 1), (1, -1)])
def test_time_interleaved_rejects_bad_counts(repeats: int, warmup: int) -> None:
    with pytest.raises(ValueError, match=r"repeats|warmup"):
        harness.time_interleaved({}, torch.device("cpu"), repeats=repeats, warmup=warmup)


def test_measure_peak_sees_a_large_allocation_on_cpu() -> None:
    with harness.measure_peak(torch.device("cpu")) as peak:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        del block
    assert peak.kind.startswith("cpu_peak_rss")
    assert peak.peak_mib - peak.start_mib >= 60 or peak.kind == "cpu_peak_rss_lifetime"


def test_resolve_rejects_unknown_presets_and_bad_overrides() -> None:
    with pytest.raises(ValueError, match="'nope'"):
        presets.resolve(argparse.Namespace(preset="nope"))
    with pytest.raises(ValueError, match="num_steps"):
        presets.resolve(argparse.Namespace(preset="tiny", steps=0))
    with pytest.raises(ValueError, match="dtype"):
        harness.resolve_dtype("fp8")


def test_overrides_apply_to_the_preset() -> None:
    preset = presets.resolve(argparse.Namespace(preset="default", steps=3, batch_size=5))
    assert (preset.name, preset.num_steps) == ("tiny", 3)
    assert preset.sample_batch_size == preset.train_batch_size == 5


def test_epoch_phases_are_the_trainers_metrics_and_other_is_the_rest() -> None:
    logged = {
        "time_sample_s": 1.0,
        "time_reward_s": 0.5,
        "time_advantages_s": 0.25,
        "time_train_s": 2.0,
        "time_epoch_s": 4.0,
    }
    assert bench_epoch.phase_seconds(logged) == {
        "sampling": 1.0,
        "reward": 0.5,
        "advantages": 0.25,
        "training": 2.0,
        "other": 0.25,
    }
