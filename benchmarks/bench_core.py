"""Micro-benchmark of every public ``ddpo.core`` function, with and without runtime shape checks.

Each variant is timed in its own fresh interpreter (``DDPO_TYPECHECK`` unset, then ``=1``), so
the two differ only in the jaxtyping/beartype wrappers. Times are of the fastest short block on
one thread over a few alternating rounds, in microseconds per call. On a loaded machine the two
processes can still see different load; the ``paired`` column (checked vs unwrapped in the
checked process, blocks interleaved) is the more robust estimate of the checking cost.

Run alone: ``python benchmarks/bench_core.py --measure [--preset tiny]`` prints the raw JSON.
"""

import argparse
import functools
import inspect
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # realistic: SD latents of 512x512 images, batch 8, 50 steps, an epoch of 64 rewards
    "default": {"batch": 8, "latent": (4, 64, 64), "steps": 50, "rewards": 64, "prompts": 16},
    "tiny": {"batch": 2, "latent": (4, 8, 8), "steps": 10, "rewards": 8, "prompts": 4},
}
MIN_RUN_TIME = {"default": 0.3, "tiny": 0.1}
ROUNDS = {"default": 3, "tiny": 1}  # tiny: a smoke run (each round is two processes)
BLOCK_TIME = 1e-3

Case = tuple[str, str, tuple[Any, ...], dict[str, Any]]


def cases(preset: str, device: str) -> list[Case]:
    """``(function, shape description, args, kwargs)`` for every public core function."""
    import torch

    import ddpo.core as core

    p = PRESETS[preset]
    g = torch.Generator().manual_seed(0)
    b, (c, h, w), steps, n = p["batch"], p["latent"], p["steps"], p["rewards"]

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device)

    model_output, sample, noise, other = (randn(b, c, h, w) for _ in range(4))
    alpha_bars = (torch.full((b,), 0.5, device=device), torch.full((b,), 0.6, device=device))
    sigmas = (torch.full((b,), 0.6, device=device), torch.full((b,), 0.5, device=device))
    flow = {"noise_level": 0.7, "sigma_max": 0.98}
    std_dev = torch.full((b,), 0.1, device=device)
    alphas_cumprod = torch.linspace(0.9999, 0.005, 1000, device=device)
    timesteps = (torch.arange(b, device=device) * 97) % 1000
    log_prob, old_log_prob, adv = randn(b), randn(b), randn(b)
    rewards = randn(n)
    prompts = [f"prompt {i % p['prompts']}" for i in range(n)]
    group_ids = torch.arange(n, device=device) % p["prompts"]
    permutation = torch.stack([torch.randperm(steps, generator=g) for _ in range(b)]).to(device)
    state = core.init_per_prompt_stats(buffer_size=16, min_count=16)
    _, state = core.update_per_prompt_stats(state, prompts, rewards)
    lat = f"{b}x{c}x{h}x{w}"
    step = (model_output, sample, *alpha_bars)
    return [
        ("ddim_step_with_logprob", f"{lat} sample", step, {"eta": 1.0, "noise": noise}),
        ("ddim_step_with_logprob", f"{lat} score", step, {"eta": 1.0, "prev_sample": other}),
        (
            "flow_sde_step_with_logprob",
            f"{lat} sample",
            (model_output, sample, *sigmas),
            {**flow, "noise": noise},
        ),
        (
            "flow_sde_step_with_logprob",
            f"{lat} score",
            (model_output, sample, *sigmas),
            {**flow, "prev_sample": other},
        ),
        (
            "flow_cps_step_with_logprob",
            f"{lat} sample",
            (model_output, sample, *sigmas),
            {"noise_level": 0.8, "noise": noise},
        ),
        (
            "flow_dpm_solver_step",
            f"{lat} second order",
            (model_output, sample, *sigmas),
            {"previous_clean": other, "sigma_previous": torch.full_like(sigmas[0], 0.95)},
        ),
        ("classifier_free_guidance", lat, (model_output, other, 7.5), {}),
        ("rescale_guidance", lat, (model_output, other), {"guidance_rescale": 0.7}),
        ("ppo_clip_loss", f"{b}", (log_prob, old_log_prob, adv), {}),
        ("score_function_loss", f"{b}", (log_prob, adv), {}),
        ("normalize_advantages", f"{n}", (rewards,), {}),
        ("group_normalize_advantages", f"{n}, {p['prompts']} groups", (rewards, group_ids), {}),
        ("update_per_prompt_stats", f"{n}, {p['prompts']} prompts", (state, prompts, rewards), {}),
        ("clip_advantages", f"{n}", (rewards,), {}),
        ("gaussian_kl", lat, (model_output, other, std_dev), {}),
        ("flow_grpo_kl", lat, (model_output, other, std_dev), {}),
        ("subsample_timesteps", f"{b}x{steps}", (permutation,), {"timestep_fraction": 0.5}),
        ("alpha_bar_at", f"{b} of 1000", (alphas_cumprod, timesteps), {}),
        ("vp_add_noise", lat, (sample, noise, alpha_bars[0]), {}),
        ("vp_velocity", lat, (sample, noise, alpha_bars[0]), {}),
        (
            "vp_training_target",
            lat,
            (sample, noise, alpha_bars[0]),
            {"prediction_type": "v_prediction"},
        ),
        (
            "vp_predicted_x0",
            lat,
            (sample, model_output, alpha_bars[0]),
            {"prediction_type": "epsilon"},
        ),
        ("flow_add_noise", lat, (sample, noise, sigmas[0]), {}),
        ("flow_velocity_target", lat, (sample, noise), {}),
        ("flow_predicted_x0", lat, (sample, model_output, sigmas[0]), {}),
        ("ema_decay_at", "scalar", (100,), {"decay": 0.9}),
        (
            "sliding_window_start",
            "scalar",
            (100,),
            {"shift_interval": 25, "stride": 4, "max_start": 12},
        ),
        ("ema_step", lat, (sample, other), {"decay": 0.9}),
        ("nft_optimality", f"{b}", (adv,), {}),
        (
            "nft_loss",
            lat,
            (sample, noise, sigmas[0], model_output, other, sigmas[1]),
            {"beta": 1.0},
        ),
        (
            "nft_clean_loss",
            lat,
            (sample, model_output, other, sigmas[1]),
            {"beta": 1.0},
        ),
        ("nft_old_policy_decay", "scalar", (100,), {"decay_type": 1}),
        (
            "diffusion_dpo_loss",
            f"{lat} pairs",
            (model_output, other, sample, noise, sample, noise),
            {"beta": 5000.0},
        ),
        ("awm_log_likelihood", lat, (model_output, noise, sigmas[0]), {}),
        ("awm_kl_penalty", lat, (model_output, other, sigmas[0]), {}),
    ]


def _block_timer(call: Callable[[], Any], device: str) -> Callable[[], float]:
    """A function that runs ``call`` for one short block and returns seconds per call.

    Blocks last about ``BLOCK_TIME`` so that the fastest of many is rarely interrupted by other
    processes; CUDA work is synchronized at the end of each block.
    """
    import torch

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    call()  # warm up
    sync()
    start = time.perf_counter()
    call()
    sync()
    number = max(1, int(BLOCK_TIME / max(time.perf_counter() - start, 1e-9)))

    def block() -> float:
        start = time.perf_counter()
        for _ in range(number):
            call()
        sync()
        return (time.perf_counter() - start) / number

    return block


def measure(preset: str, device: str) -> dict[str, Any]:
    """Time every case in this process; ``checked`` says whether shape checks are on.

    Each case runs in short blocks for ``MIN_RUN_TIME`` seconds; its time is the fastest block's
    time per call. With checks on, blocks of each function alternate with blocks of its
    unchecked original (``inspect.unwrap``): a paired estimate of the outer call's checking cost
    that is robust to load from other processes (inner helpers such as ``per_sample`` stay
    checked in both, so it is a lower bound).
    """
    import torch

    import ddpo.core as core

    torch.set_num_threads(1)
    checked = hasattr(core.ppo_clip_loss, "__wrapped__")
    times, unwrapped = {}, {}
    for name, shape, args, kwargs in cases(preset, device):
        fn = getattr(core, name)
        key = f"{name} [{shape}]"
        variants = [_block_timer(functools.partial(fn, *args, **kwargs), device)]
        if checked:
            raw = functools.partial(inspect.unwrap(fn), *args, **kwargs)
            variants.append(_block_timer(raw, device))
        best = [float("inf")] * len(variants)
        deadline = time.perf_counter() + MIN_RUN_TIME[preset] * len(variants)
        while time.perf_counter() < deadline:
            for i, block in enumerate(variants):
                best[i] = min(best[i], block())
        times[key] = best[0]
        if checked:
            unwrapped[key] = best[1]
    return {
        "checked": checked,
        "torch": torch.__version__,
        "seconds": times,
        "unwrapped_seconds": unwrapped,
    }


def _fastest(runs: Iterable[dict[str, float]]) -> dict[str, float]:
    best: dict[str, float] = {}
    for run_ in runs:
        for key, seconds in run_.items():
            best[key] = min(seconds, best.get(key, seconds))
    return best


def _measure_in_subprocess(preset: str, device: str, typecheck: bool) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "DDPO_TYPECHECK"}
    if typecheck:
        env["DDPO_TYPECHECK"] = "1"
    cmd = [sys.executable, __file__, "--measure", "--preset", preset, "--device", device]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if result["checked"] != typecheck:
        raise RuntimeError(f"DDPO_TYPECHECK={int(typecheck)} did not set checks {typecheck}")
    return result


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Benchmark entry point for ``benchmarks/run.py``."""
    # Alternate the two variants for a few rounds and keep each case's fastest time: the least
    # disturbed by other processes on a shared machine.
    rounds = [
        (
            _measure_in_subprocess(args.preset, args.device, typecheck=False),
            _measure_in_subprocess(args.preset, args.device, typecheck=True),
        )
        for _ in range(ROUNDS[args.preset])
    ]
    plain = _fastest(r[0]["seconds"] for r in rounds)
    checked = _fastest(r[1]["seconds"] for r in rounds)
    unwrapped = _fastest(r[1]["unwrapped_seconds"] for r in rounds)
    rows: list[dict[str, Any]] = []
    for key, seconds in plain.items():
        us, us_checked = seconds * 1e6, checked[key] * 1e6
        name, shape = key.rstrip("]").split(" [", 1)
        rows.append(
            {
                "function": name,
                "shape": shape,
                "µs/call": us,
                "µs/call checked": us_checked,
                "overhead µs": us_checked - us,
                "overhead %": 100 * (us_checked - us) / us,
                "paired overhead µs": us_checked - unwrapped[key] * 1e6,
            }
        )
    across = _median([r["overhead µs"] for r in rows])
    within = _median([r["paired overhead µs"] for r in rows])
    return {
        "title": f"ddpo.core per call ({args.preset} preset, {args.device}, 1 thread)",
        "columns": list(rows[0]),
        "rows": rows,
        "notes": [
            f"median shape-check overhead per call: {across:.0f} µs across processes, "
            f"{within:.0f} µs paired in one process (torch {rounds[0][0]['torch']})"
        ],
        "overhead_us_median": across,
        "paired_overhead_us_median": within,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--measure", action="store_true", help="time in this process, print JSON")
    parser.add_argument("--preset", choices=tuple(PRESETS), default="default")
    parser.add_argument("--device", default="cpu")
    cli = parser.parse_args()
    if cli.measure:
        print(json.dumps(measure(cli.preset, cli.device)))
    else:
        print(json.dumps(run(cli), indent=2))
