"""Fine-tune a Stable Diffusion model with DDPO: the seed-style example script.

It takes the same flags as ``ddpo train`` (every `DDPOConfig` field as a nested flag), e.g.::

    python examples/ddpo.py                                   # the default preset
    python examples/ddpo.py --ddpo_config.num_epochs=2 --ddpo_config.sample_batch_size=4 \\
        --ddpo_config.train_batch_size=2 --reward=jpeg_compressibility --prompts=simple_animals

and reads top to bottom as a DDPO run does: a reward function, a prompt function, an image hook
that logs samples to tensorboard, the config, the pipeline, the trainer, train, save.
"""

import sys
from pathlib import Path

# This script is named like the package: keep its own folder off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ddpo import DDPOTrainer, DefaultDDPOStableDiffusionPipeline  # noqa: E402
from ddpo.cli import build_reward_fn, parse_train_args, preset_prompt_fn  # noqa: E402
from ddpo.reporting import image_grid, read_metrics, reward_curve  # noqa: E402


def image_outputs_logger(image_data, global_step, accelerate_logger):
    """Log the epoch's first sampling batch, captioned with prompts and rewards, as one image."""
    images, prompts, _, rewards, _ = image_data[0]
    captions = [f"{p} | r={float(r):.2f}" for p, r in zip(prompts, rewards, strict=True)]
    grid = image_grid(images[:16], captions[:16])
    grid.save(OUTPUT_DIR / "images" / f"step_{global_step:06d}.png")
    if accelerate_logger is not None:  # None when no tracker is configured
        accelerate_logger.log_images(
            {"samples": np.asarray(grid)[None]}, step=global_step, dataformats="NHWC"
        )


if __name__ == "__main__":
    # 1. Flags: the DDPO config (defaults: the measured default preset), model, reward, prompts.
    args = parse_train_args(prog="python examples/ddpo.py")
    config = args.ddpo_config

    # 2. Reward and prompt functions: (images, prompts, metadata) -> (rewards, metadata) and
    #    () -> (prompt, metadata). Any callables with these shapes work. The preset's prompt
    #    function takes each prompt of its pool prompt_repeats times in a row, so that group
    #    advantages compare images of the same prompt.
    reward_fn = build_reward_fn(args)
    prompt_fn = preset_prompt_fn(args, seed=config.seed)

    # 3. The pipeline: LoRA adapters or the whole UNet.
    pipeline = DefaultDDPOStableDiffusionPipeline(
        args.pretrained_model,
        pretrained_model_revision=args.pretrained_revision,
        use_lora=args.use_lora,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_rank,
    )

    # 4. Train. The trainer writes metrics.jsonl, tensorboard logs, checkpoints and final/.
    push = config.push_to_hub
    config.push_to_hub = False  # pushed below, with the token, once everything is saved
    trainer = DDPOTrainer(
        config, reward_fn, prompt_fn, pipeline, image_samples_hook=image_outputs_logger
    )
    OUTPUT_DIR = trainer.output_dir
    (OUTPUT_DIR / "images").mkdir(parents=True, exist_ok=True)
    trainer.train()
    trainer.close()

    # 5. Save: the reward curve next to the final weights; then upload if asked.
    metrics = read_metrics(OUTPUT_DIR / "metrics.jsonl")
    reward_curve(
        [m["epoch"] for m in metrics],
        [m["reward_mean"] for m in metrics],
        [m["reward_std"] for m in metrics],
    ).save(OUTPUT_DIR / "reward_curve.png")
    for m in metrics:
        print(f"epoch {m['epoch']}: reward_mean {m['reward_mean']:.4f}")
    print(f"final pipeline: {OUTPUT_DIR / 'final'}")
    if push:
        trainer.push_to_hub(token=args.hf_user_access_token)

    # 6. The result loads like any diffusers pipeline folder.
    tuned = DefaultDDPOStableDiffusionPipeline(str(OUTPUT_DIR / "final"))
    with torch.no_grad():
        sample = tuned(
            prompt=[prompt_fn()[0]],
            num_inference_steps=config.sample_num_steps,
            generator=torch.Generator().manual_seed(0),
        )
    sample.images[0].save(OUTPUT_DIR / "sample_from_final.png")
