"""Algorithms: one epoch of each algorithm on the same run, its time by phase and its peak memory.

Each arm is a ``ddpo train`` preset on the packaged ``ddpo-tiny-shapes-flow`` with the same
epoch (128 samples of 10 SDE steps at guidance 1, LoRA rank 8, two optimizer steps):
``flow_grpo_tiny`` (Flow-GRPO's policy gradient, the baseline), ``nft_tiny`` (DiffusionNFT),
``awm_tiny`` (Advantage Weighted Matching) and ``dpo_tiny`` (online Diffusion-DPO), each with
its paper's settings (`ddpo.presets.algorithm_tiny_preset`). Every run is its own process with
one thread: it builds the trainer as ``ddpo train`` does, runs one epoch to warm up, then times
a second (``DDPOTrainer.step``) inside `harness.measure_peak` (CUDA max allocated, or the CPU
peak resident set reset at the epoch's start). The phase times are those the trainer logs
(``time_sample_s``, ``time_prepare_s``, ``time_train_s``, ``time_epoch_s``).

The arms run interleaved, ``--rounds`` times, in a rotated order each round, so that a busy
moment of a shared machine falls on every arm alike; the summary gives each arm's median and,
per round, its ratio to the baseline's epoch of the same round (median over rounds).

    python benchmarks/bench_algorithms.py --rounds 3 --out benchmarks/out/algorithms.json
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ARMS = ("flow_grpo_tiny", "nft_tiny", "awm_tiny", "dpo_tiny")
BASELINE = "flow_grpo_tiny"
PHASES = ("time_sample_s", "time_prepare_s", "time_train_s", "time_epoch_s")


def worker(preset: str, device: str) -> dict[str, Any]:
    """One arm in this process: warm-up epoch, then the timed epoch with its peak memory."""
    import harness
    import torch

    from ddpo.cli import parse_train_args
    from ddpo.cli_train import setup_train

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        flags = [
            f"--preset={preset}",
            f"--ddpo_config.output_dir={Path(folder) / 'run'}",
            "--ddpo_config.num_epochs=2",
            "--ddpo_config.save_freq=0",
            "--ddpo_config.eval_freq=0",
            "--ddpo_config.log_with=None",
        ]
        if device == "cpu":
            flags.append("--ddpo_config.mixed_precision=no")
        setup = setup_train(parse_train_args(flags))
        trainer = setup.trainer
        step = trainer.step(0, 0)
        with harness.measure_peak(torch.device(device)) as peak:
            start = time.perf_counter()
            trainer.step(1, step)
            wall = time.perf_counter() - start
        trainer.close()
        rows = [json.loads(line) for line in (trainer.output_dir / "metrics.jsonl").open()]
    timed = rows[-1]
    return {
        "preset": preset,
        "algorithm": trainer.config.algorithm,
        "wall_s": wall,
        **{phase: timed.get(phase, 0.0) for phase in PHASES},
        "peak_mib": peak.peak_mib,
        "start_mib": peak.start_mib,
        "memory_kind": peak.kind,
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per arm: medians of the phases and memory, and the median per-round ratio of its epoch
    (and its training phase) to the baseline's."""
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_round.setdefault(row["round"], {})[row["preset"]] = row
    out: dict[str, Any] = {}
    for arm in sorted({row["preset"] for row in rows}, key=ARMS.index):
        mine = [row for row in rows if row["preset"] == arm]
        entry = {key: statistics.median(r[key] for r in mine) for key in (*PHASES, "peak_mib")}
        entry["epoch_delta_mib"] = statistics.median(r["peak_mib"] - r["start_mib"] for r in mine)
        for key in ("time_epoch_s", "time_train_s"):
            ratios = [
                runs[arm][key] / runs[BASELINE][key]
                for runs in by_round.values()
                if arm in runs and BASELINE in runs and runs[BASELINE][key] > 0
            ]
            entry[f"{key}_vs_baseline"] = statistics.median(ratios) if ratios else None
        out[arm] = entry
    return out


def table(summary: dict[str, Any]) -> str:
    lines = [
        "| arm | epoch s | sampling s | prepare s | training s | epoch / Flow-GRPO's | "
        "training / Flow-GRPO's | peak MiB | epoch's growth MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, e in summary.items():
        lines.append(
            f"| {arm} | {e['time_epoch_s']:.1f} | {e['time_sample_s']:.1f} | "
            f"{e['time_prepare_s']:.1f} | {e['time_train_s']:.1f} | "
            f"{e['time_epoch_s_vs_baseline']:.2f} | {e['time_train_s_vs_baseline']:.2f} | "
            f"{e['peak_mib']:.0f} | {e['epoch_delta_mib']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="benchmarks/out/algorithms.json")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.device)))
        return
    if BASELINE not in args.arms:
        parser.error(f"--arms must include the baseline {BASELINE}")
    rows: list[dict[str, Any]] = []
    here = Path(__file__).resolve().parent
    for index in range(args.rounds):
        order = args.arms[index % len(args.arms) :] + args.arms[: index % len(args.arms)]
        for arm in order:
            command = [sys.executable, str(here / Path(__file__).name), "--worker", arm,
                       "--device", args.device]  # fmt: skip
            env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            done = subprocess.run(
                command, capture_output=True, text=True, check=True, env={**_environ(), **env}
            )
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row["round"] = index
            rows.append(row)
            print(f"round {index} {arm}: epoch {row['time_epoch_s']:.1f} s, "
                  f"peak {row['peak_mib']:.0f} MiB", flush=True)  # fmt: skip
    summary = summarize(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "worker"}
    out.write_text(json.dumps({"settings": settings, "rows": rows, "summary": summary}, indent=1))
    print(table(summary))


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)


if __name__ == "__main__":
    main()
