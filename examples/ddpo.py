"""Fine-tune a text-to-image diffusion model with DDPO: the seed-style example script.

Every family ``ddpo train`` trains works here (``ddpo train --help`` lists them, from
`ddpo.adapters.families.FAMILIES`), the family read from the model folder's ``model_index.json``.

It takes the flags of ``ddpo train`` that a run needs (every `DDPOConfig` field as a nested
flag), with the default preset's values as defaults, e.g.::

    python examples/ddpo.py                                   # the default preset
    python examples/ddpo.py --ddpo_config.num_epochs=2 --ddpo_config.sample_batch_size=4 \\
        --ddpo_config.train_batch_size=2 --reward=jpeg_compressibility --prompts=simple_animals

and reads top to bottom as a DDPO run does: a reward function, a prompt function, an image hook
that logs samples to tensorboard, the config, the pipeline, the trainer, train, save.
"""

import sys
from dataclasses import dataclass, field
from pathlib import Path

# This script is named like the package: keep its own folder off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402
import tyro  # noqa: E402

from ddpo import DDPOConfig, DDPOTrainer  # noqa: E402
from ddpo.adapters import load_policy  # noqa: E402
from ddpo.presets import DEFAULT_SETTINGS, default_preset  # noqa: E402
from ddpo.prompts import PromptSetName, training_prompt_fn  # noqa: E402
from ddpo.reporting import image_grid, read_metrics, reward_curve  # noqa: E402
from ddpo.rewards.registry import RewardName, RewardOptions, build_reward_fn  # noqa: E402


@dataclass
class ScriptArguments:
    """DDPO fine-tuning: the config, the model, the reward and the prompts."""

    ddpo_config: DDPOConfig = field(default_factory=default_preset)
    """The DDPO run; defaults: the measured default preset (`ddpo.presets`)."""
    pretrained_model: str = DEFAULT_SETTINGS.pretrained_model
    """Built-in model name, local diffusers folder or hub id (SD 1.x/2.x, SDXL, SD3/SD3.5 or
    FLUX.1: the family is read from its model_index.json)."""
    pretrained_revision: str = "main"
    use_lora: bool = DEFAULT_SETTINGS.use_lora
    """LoRA adapters on the denoiser's attention (True) or the whole denoiser (False): the UNet
    (SD, SDXL) or the transformer (SD3, FLUX.1)."""
    lora_rank: int = DEFAULT_SETTINGS.lora_rank
    resolution: int | None = None
    """Image side in pixels (default: the model's native size, 1024 for SDXL, SD3 and FLUX.1)."""
    reward: RewardName = DEFAULT_SETTINGS.reward
    prompts: PromptSetName = DEFAULT_SETTINGS.prompts
    prompt_repeats: int = DEFAULT_SETTINGS.prompt_repeats
    """Each prompt this many times in a row, so that group advantages compare its images."""
    prompt_pool: int = DEFAULT_SETTINGS.prompt_pool
    """A fixed pool of this many prompts, drawn with the config's seed (0: fresh prompts)."""
    hf_user_access_token: str | None = None


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
    args = tyro.cli(ScriptArguments, use_underscores=True)
    config = args.ddpo_config

    # 2. Reward and prompt functions: (images, prompts, metadata) -> (rewards, metadata) and
    #    () -> (prompt, metadata). Any callables with these shapes work. The training prompt
    #    function takes each prompt of its pool prompt_repeats times in a row.
    reward_fn = build_reward_fn(args.reward, RewardOptions(token=args.hf_user_access_token))
    prompt_fn = training_prompt_fn(
        args.prompts,
        seed=config.seed,
        prompt_repeats=args.prompt_repeats,
        prompt_pool=args.prompt_pool,
    )

    # 3. The pipeline of the model's family (DefaultDDPOStableDiffusionPipeline, ...,
    #    `ddpo.adapters.families.FAMILIES`): LoRA adapters or the whole denoiser (UNet or
    #    transformer).
    pipeline = load_policy(
        args.pretrained_model,
        revision=args.pretrained_revision,
        resolution=args.resolution,
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
    tuned = load_policy(str(OUTPUT_DIR / "final"))
    with torch.no_grad():
        sample = tuned(
            prompt=[prompt_fn()[0]],
            num_inference_steps=config.sample_num_steps,
            generator=torch.Generator().manual_seed(0),
        )
    sample.images[0].save(OUTPUT_DIR / "sample_from_final.png")
