"""One rank of the 2-process gradient-sync test (run by ``accelerate launch``; not a test file).

Usage: ``accelerate launch --num_processes 2 --cpu ddp_worker.py MODEL_DIR OUT_DIR [compiled]``.
Each rank trains one epoch of a tiny config and writes its trainable weights (before and after)
and its local rewards into OUT_DIR; ``compiled`` turns on ``compile_denoiser`` and
``channels_last``.
"""

import json
import os
import random
import sys
from pathlib import Path

import safetensors.torch
import torch

from ddpo import DDPOConfig, DDPOTrainer
from ddpo.adapters import load_policy


def main() -> None:
    model_dir, out_dir = sys.argv[1], Path(sys.argv[2])
    compiled = sys.argv[3:] == ["compiled"]
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
        train_batch_size=1,
        train_gradient_accumulation_steps=2,
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
    pipeline = load_policy(model_dir)  # SD, SDXL, SD3 or FLUX, from the folder's model_index.json
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
    trainer.close()


if __name__ == "__main__":
    main()
