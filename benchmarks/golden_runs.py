"""Golden runs: one short fixed training per model family, recorded bit for bit.

A refactor that must not change behaviour records the runs before it and checks them after it,
on the same machine (``--record`` then ``--check``). Each run trains the family's built-in tiny
model for 2 epochs with a fixed seed (LoRA, KL penalty, per-prompt groups), and the record holds
every row of its ``metrics.jsonl`` (without the timings) and the SHA-256 of each final trainable
tensor. Bit-for-bit equality holds on one machine and library build only: another CPU rounds
differently (the tolerance-based lock for that is ``tests/trainer/test_behaviour_lock.py``).

    python benchmarks/golden_runs.py --record /tmp/golden.json
    python benchmarks/golden_runs.py --check /tmp/golden.json
"""

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from ddpo import DDPOConfig, DDPOTrainer
from ddpo.adapters import load_policy

FAMILY_MODELS = {
    "sd": "ddpo-tiny-random",
    "sdxl": "ddpo-tiny-sdxl-random",
    "sd3": "ddpo-tiny-sd3-random",
    "flux": "ddpo-tiny-flux-random",
}
PROMPTS = ("a red circle", "a blue square")


def _brightness(images: torch.Tensor, prompts: Any, metadata: Any) -> tuple[torch.Tensor, dict]:
    return images.float().mean(dim=(1, 2, 3)), {}


def golden_run(family: str, folder: Path) -> dict[str, Any]:
    """Train ``family``'s tiny model for 2 epochs; its metrics rows and weight hashes."""
    torch.manual_seed(0)
    counter = {"i": 0}

    def prompt() -> tuple[str, dict]:
        counter["i"] += 1
        return PROMPTS[counter["i"] % len(PROMPTS)], {}

    config = DDPOConfig(
        num_epochs=2,
        seed=11,
        sample_num_steps=3,
        sample_batch_size=2,
        sample_num_batches_per_epoch=2,
        sample_guidance_scale=2.0,
        train_batch_size=2,
        train_timestep_fraction=0.67,
        train_learning_rate=1e-3,
        kl_coef=0.05,
        advantage_mode="group",
        save_freq=0,
        mixed_precision="no",
        output_dir=str(folder),
        accelerator_kwargs={"cpu": True},
        log_with=None,
    )
    policy = load_policy(FAMILY_MODELS[family], use_lora=True)
    trainer = DDPOTrainer(config, _brightness, prompt, policy)
    trainer.train()
    weights = {
        name: hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()
        for name, t in sorted(trainer.trainable_state_dict().items())
    }
    trainer.close()
    rows = [json.loads(line) for line in (trainer.output_dir / "metrics.jsonl").open()]
    rows = [{k: v for k, v in row.items() if not k.startswith("time")} for row in rows]
    return {"metrics": rows, "weights": weights}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--record", type=Path)
    group.add_argument("--check", type=Path)
    parser.add_argument("--families", nargs="*", default=list(FAMILY_MODELS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families:
            runs[family] = golden_run(family, Path(tmp) / family)
    if args.record:
        args.record.write_text(json.dumps(runs, indent=1, sort_keys=True))
        print(f"recorded {sorted(runs)} in {args.record}")
        return 0
    recorded = json.loads(args.check.read_text())
    failed = False
    for family, run in runs.items():
        same = recorded[family] == json.loads(json.dumps(run))
        print(f"{family}: {'identical' if same else 'DIFFERENT'}")
        if not same:
            failed = True
            for i, (a, b) in enumerate(
                zip(recorded[family]["metrics"], run["metrics"], strict=False)
            ):
                if a != b:
                    print(f"  epoch {i}: recorded {a}\n           now      {b}")
            for name, digest in recorded[family]["weights"].items():
                if run["weights"].get(name) != digest:
                    print(f"  weight {name} differs")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
