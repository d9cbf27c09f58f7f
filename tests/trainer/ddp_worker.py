"""One rank of the 2-process gradient-sync tests (run by ``torch.distributed.run``; not a test
file).

Usage: ``python -m torch.distributed.run --standalone --nproc_per_node 2 ddp_worker.py OUT_DIR
RUN...``, each ``RUN`` being ``NAME:MODEL`` or ``NAME:MODEL:compiled``. The runs train one after
the other in the same two processes (one launch, one process group: starting the processes is
most of the cost), each in ``OUT_DIR/NAME``: one epoch of a tiny config, then its trainable
weights (before and after) and this rank's rewards are written there. ``compiled`` turns on
``compile_denoiser`` and ``channels_last``.
"""

import json
import os
import random
import sys
from pathlib import Path

import safetensors.torch
import torch
from accelerate.state import AcceleratorState, GradientState

from ddpo import DDPOConfig, DDPOTrainer
from ddpo.adapters import load_policy


def train(model: str, out_dir: Path, *, compiled: bool) -> DDPOTrainer:
    """Train one epoch on ``model`` (its family from the folder's ``model_index.json``) and
    write this rank's weights and rewards into ``out_dir``; returns the trainer, not closed."""
    local_rewards: list[float] = []

    def brightness(images: torch.Tensor, prompts: object, metadata: object) -> tuple[object, dict]:
        rewards = images.mean(dim=(1, 2, 3))
        local_rewards.extend(rewards.tolist())
        return rewards, {}

    def prompt_fn() -> tuple[str, dict]:
        return random.choice(["a red circle", "a blue square", "a green star"]), {}

    config = DDPOConfig(
        num_epochs=1,
        sample_num_steps=4,
        sample_batch_size=2,
        sample_num_batches_per_epoch=1,
        # One batch of both samples, its two timesteps accumulated (the first backward without
        # the all-reduce); guided, the denoiser sees a batch of 4 when sampling and training,
        # the shapes `test_speed.py` compiles first, so a compiled run reuses its kernels.
        train_batch_size=2,
        train_gradient_accumulation_steps=1,
        train_timestep_fraction=0.5,
        train_learning_rate=1e-2,
        train_clip_range=1.0,
        save_freq=1,
        mixed_precision="no",
        output_dir=str(out_dir / "run"),
        accelerator_kwargs={"cpu": True},
        compile_denoiser=compiled,
        channels_last=compiled,
    )
    pipeline = load_policy(model)  # SD, SDXL, SD3 or FLUX, from the folder's model_index.json
    # Different initial LoRA weights per rank: preparing the UNet must broadcast rank 0's.
    with torch.no_grad():
        for name, param in pipeline.denoiser.named_parameters():
            if param.requires_grad and "lora_B" in name:
                param.add_(0.01 * (1 + int(os.environ.get("RANK", "0"))))
    trainer = DDPOTrainer(config, brightness, prompt_fn, pipeline)
    rank = trainer.accelerator.process_index
    safetensors.torch.save_file(trainer.trainable_state_dict(), str(out_dir / f"init{rank}.st"))
    trainer.train()
    safetensors.torch.save_file(trainer.trainable_state_dict(), str(out_dir / f"final{rank}.st"))
    (out_dir / f"rewards{rank}.json").write_text(json.dumps(local_rewards))
    # Negative control, TRL's bug: one more epoch through the unwrapped UNet (no all-reduce).
    trainer.unet = trainer.accelerator.unwrap_model(trainer.unet)
    trainer.step(1, trainer.global_step)
    safetensors.torch.save_file(trainer.trainable_state_dict(), str(out_dir / f"unsynced{rank}.st"))
    return trainer


def main() -> None:
    out_dir, runs = Path(sys.argv[1]), sys.argv[2:]
    trainer = None
    for run in runs:
        name, model, *flags = run.split(":")
        if trainer is not None:
            # The next run builds its own Accelerator on the same process group: closing the
            # trainer would destroy the group, so only accelerate's singletons are cleared.
            trainer.rollout.close()
            AcceleratorState._reset_state(True)
            GradientState._reset_state()
        (out_dir / name).mkdir(parents=True, exist_ok=True)
        trainer = train(model, out_dir / name, compiled=flags == ["compiled"])
    if trainer is not None:
        trainer.close()


if __name__ == "__main__":
    main()
