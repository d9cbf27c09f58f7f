"""One process of the scale-out tests (run by ``accelerate launch`` or torch.distributed.run;
not a test file).

Usage: ``scale_out_worker.py OUT_DIR [--probe V]... [--train TAG EPOCHS]... [--resume RUN]
[--fsdp-version V] [--force-fsdp]``; the steps run in this order, in the same processes (one
launch: starting the processes costs more than a tiny run).

``--probe V`` writes what accelerate makes of an FSDP plugin of version ``V`` on CPU processes
(its distributed type and the model's wrapper) into ``OUT_DIR/probe{V}_{rank}.json``.

``--train TAG EPOCHS`` fine-tunes the whole UNet under accelerate's FSDP plugin for ``EPOCHS``
epochs with a checkpoint after each, in ``OUT_DIR/run{TAG}`` (or resuming ``--resume RUN``),
and writes its sharding report (``sharding{TAG}{rank}.json``), the full trained weights
(``final{TAG}.st``) or the error (``error{TAG}{rank}.txt``).
"""

import argparse
import json
import random
import sys
import traceback
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from accelerate import PartialState

from ddpo import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline

MODEL = "ddpo-tiny-random"
PROMPTS = ("a red circle", "a blue square", "a green star")


def prompt_fn() -> tuple[str, dict[str, Any]]:
    return random.choice(PROMPTS), {}


def config(run_dir: Path, *, epochs: int, resume: str | None, lr: float) -> DDPOConfig:
    return DDPOConfig(
        num_epochs=epochs,
        sample_num_steps=4,
        sample_batch_size=2,
        sample_num_batches_per_epoch=1,
        train_batch_size=1,
        train_gradient_accumulation_steps=2,
        train_timestep_fraction=0.5,
        train_learning_rate=lr,
        train_clip_range=1.0,
        save_freq=1,
        mixed_precision="no",
        output_dir="" if resume else str(run_dir),
        resume_from=resume or "",
        accelerator_kwargs={"cpu": True},
    )


def fsdp_accelerator(version: int, *, force: bool) -> Any:
    """An `Accelerator` on the CPU with accelerate's FSDP plugin (full state dicts).

    accelerate runs CPU processes as MULTI_CPU (DDP) whatever plugin it is given; ``force``
    switches its process-wide state to FSDP afterwards, so that ``prepare`` takes the FSDP path
    (torch's FSDP on the CPU with gloo), as it would on GPUs.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=version,
        state_dict_type="FULL_STATE_DICT",
        reshard_after_forward=True if version == 2 else "FULL_SHARD",
        cpu_ram_efficient_loading=False,
    )
    accelerator = Accelerator(cpu=True, fsdp_plugin=plugin, mixed_precision="no")
    if force:  # both singletons: every AcceleratorState() copies PartialState's fields
        PartialState().distributed_type = DistributedType.FSDP
        accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = plugin
    return accelerator


def reset_accelerate() -> None:
    """Clear accelerate's process-wide singletons for the next step's `Accelerator`, keeping
    the process group (closing a trainer would destroy it)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def probe(out_dir: Path, version: int, rank: int) -> None:
    """What accelerate makes of an FSDP plugin on CPU processes."""
    accelerator = fsdp_accelerator(version, force=False)
    layer = torch.nn.Linear(4, 4)
    prepared, _ = accelerator.prepare(layer, torch.optim.AdamW(layer.parameters()))
    found = {"distributed_type": str(accelerator.distributed_type)}
    found["wrapper"] = type(prepared).__name__
    (out_dir / f"probe{version}_{rank}.json").write_text(json.dumps(found))


def fsdp_run(args: argparse.Namespace, tag: str, epochs: int, rank: int) -> DDPOTrainer:
    """One FSDP run (see the module's docstring); returns its trainer, not closed."""
    out_dir: Path = args.out_dir

    def brightness(images: torch.Tensor, prompts: object, metadata: object) -> tuple[Any, dict]:
        return images.mean(dim=(1, 2, 3)), {}

    torch.manual_seed(0)  # the same global RNG in every process, and in every run
    pipeline = DefaultDDPOStableDiffusionPipeline(MODEL, use_lora=False)
    cfg = config(out_dir / f"run{tag}", epochs=epochs, resume=args.resume, lr=1e-4)
    try:
        accelerator = fsdp_accelerator(args.fsdp_version, force=args.force_fsdp)
        trainer = DDPOTrainer(cfg, brightness, prompt_fn, pipeline, accelerator=accelerator)
        (out_dir / f"sharding{tag}{rank}.json").write_text(json.dumps(sharding(trainer)))
        trainer.train()
    except Exception as err:
        # The failure, for the test to read: type, message and where it was raised.
        (out_dir / f"error{tag}{rank}.txt").write_text(
            f"{type(err).__name__}: {err}\n{traceback.format_exc()}"
        )
        raise
    state = full_state_dict(trainer)
    if trainer.accelerator.is_main_process:
        safetensors.torch.save_file(state, str(out_dir / f"final{tag}.st"))
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--probe", type=int, action="append", default=[])
    parser.add_argument("--train", nargs=2, action="append", default=[], metavar=("TAG", "EPOCHS"))
    parser.add_argument("--fsdp-version", type=int, default=2)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--force-fsdp", action="store_true")
    args = parser.parse_args()
    # The process index as accelerate sees it (its CPU launcher may set no RANK until then).
    rank = PartialState(cpu=True).process_index
    trainer = None
    for step, version in enumerate(args.probe):
        if step:
            reset_accelerate()
        probe(args.out_dir, version, rank)
    for step, (tag, epochs) in enumerate(args.train):
        if trainer is not None:
            trainer.rollout.close()
        if step or args.probe:
            reset_accelerate()
        trainer = fsdp_run(args, tag, int(epochs), rank)
    if trainer is not None:
        trainer.close()


def sharding(trainer: DDPOTrainer) -> dict[str, Any]:
    """How the prepared UNet holds its parameters on this rank: their type, and the elements
    held locally against the whole model's."""
    from torch.distributed.tensor import DTensor

    local = total = 0
    kinds = set()
    for param in trainer.unet.parameters():
        kinds.add("DTensor" if isinstance(param, DTensor) else type(param).__name__)
        local += (param.to_local() if isinstance(param, DTensor) else param).numel()
        total += param.numel()
    accelerator = trainer.accelerator
    return {
        "distributed_type": str(accelerator.distributed_type),
        "is_fsdp2": bool(getattr(accelerator, "is_fsdp2", False)),
        "wrapper": type(trainer.unet).__name__,
        "kinds": sorted(kinds),
        "local_numel": local,
        "numel": total,
    }


def full_state_dict(trainer: DDPOTrainer) -> dict[str, torch.Tensor]:
    """The whole UNet's weights gathered from the shards (accelerate's ``get_state_dict``)."""
    state = trainer.accelerator.get_state_dict(trainer.unet)
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


if __name__ == "__main__":
    sys.exit(main())
