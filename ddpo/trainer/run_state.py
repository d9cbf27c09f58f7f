"""Everything a run needs to continue exactly, written into and read from a checkpoint folder.

The one checkpoint format of a run (see `ddpo.trainer.checkpoint` for the layout and the atomic
write): the trainable denoiser parameters (safetensors), accelerate's optimizer, scaler and RNG
states, the per-prompt tracker, the config, the run settings outside the config (the policy's,
`policy_settings`, and those of a wrapper such as ``ddpo train``), and per process the prompt
function's random stream and the prompt and reward functions' own states.
"""

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch.distributed.tensor import DTensor, distribute_tensor

from ddpo._callables import callable_name
from ddpo.core import PerPromptStatTracker
from ddpo.objectives.base import has_hook
from ddpo.trainer import checkpoint as ckpt
from ddpo.trainer.config import DDPOConfig
from ddpo.trainer.contract import is_stateful, state_of
from ddpo.trainer.prompt_rng import PromptRNG

logger = logging.getLogger(__name__)


@dataclass
class RunState:
    """The parts of a running trainer that a checkpoint saves and restores."""

    config: DDPOConfig
    accelerator: Any
    output_dir: Path
    parameters: dict[str, torch.nn.Parameter]
    """The trainable parameters by name."""
    stat_tracker: PerPromptStatTracker | None
    prompt_rng: PromptRNG
    prompt_function: Any
    reward_function: Any
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    """What defines the run besides the config, by section (JSON data): written into each
    checkpoint (``run_settings.json``) and compared on resume (`ckpt.check_resume_settings`)."""
    objective: Any = None
    """The trainer's objective: its state is saved with the callables' when it keeps one."""
    ema: Any = None
    """The trainer's `ddpo.trainer.ema.WeightsEMA` (``ema_decay``), saved beside the weights."""


POLICY_SETTINGS: tuple[str, ...] = (
    "pretrained_model_name",
    "pretrained_model_revision",
    "use_lora",
    "lora_rank",
    "lora_alpha",
    "lora_layers",
    "resolution",
    "max_sequence_length",
    "noise_level",
    "sde_type",
    "sde_window_size",
    "sde_window_start",
    "sde_window_range",
    "post_window_solver",
    "post_window_step_ratio",
)
"""The policy attributes that define a run when a policy has them (the constructor options of
the built-in pipelines): the model, its LoRA (rank, alpha, layers), the image size, the text
length, the flow models' sampler."""


def policy_settings(policy: object) -> dict[str, Any]:
    """The `POLICY_SETTINGS` attributes that ``policy`` has, as JSON data (tuples as lists);
    the LoRA shape only with ``use_lora``. A policy without them (one's own) records nothing."""
    found: dict[str, Any] = {}
    for name in POLICY_SETTINGS:
        if not hasattr(policy, name):
            continue
        value = getattr(policy, name)
        if isinstance(value, tuple):
            value = list(value)
        if value is None or isinstance(value, bool | int | float | str | list):
            found[name] = value
    if found.get("use_lora") is False:
        for name in ("lora_rank", "lora_alpha", "lora_layers"):
            found.pop(name, None)
    return found


def save(state: RunState, epoch: int, global_step: int) -> Path:
    """Write ``<output_dir>/checkpoints/checkpoint_<epoch>`` atomically; prune old ones."""
    accelerator, output_dir = state.accelerator, state.output_dir
    if accelerator.is_main_process:
        ckpt.prepare_tmp_dir(output_dir, epoch)
    accelerator.wait_for_everyone()
    tmp = ckpt.tmp_checkpoint_dir(output_dir, epoch)
    # Optimizer, grad scaler, RNG states of every process (model weights: below).
    accelerator.save_state(str(tmp))
    sharded = any(isinstance(p, DTensor) for p in state.parameters.values())
    if sharded or accelerator.is_main_process:  # gathering shards is a collective
        weights = {
            n: full_tensor(p).to("cpu", copy=True).contiguous() for n, p in state.parameters.items()
        }
        if state.ema is not None:
            ema_weights = {
                n: full_tensor(p).to("cpu", copy=True).contiguous()
                for n, p in state.ema.shadow.items()
            }
        objective_tensors = None
        if state.objective is not None and has_hook(state.objective, "tensor_state_dict"):
            objective_tensors = {
                n: full_tensor(t).to("cpu", copy=True).contiguous()
                for n, t in state.objective.tensor_state_dict().items()
            }
    if accelerator.is_main_process:
        if objective_tensors is not None:
            safetensors.torch.save_file(
                objective_tensors, str(tmp / ckpt.OBJECTIVE_TENSORS_FILENAME)
            )
        safetensors.torch.save_file(weights, str(tmp / ckpt.WEIGHTS_FILENAME))
        if state.ema is not None:
            safetensors.torch.save_file(ema_weights, str(tmp / ckpt.EMA_WEIGHTS_FILENAME))
        tracker_state = state.stat_tracker.state_dict() if state.stat_tracker else None
        ckpt.write_json(tmp / ckpt.TRACKER_FILENAME, tracker_state)
        ckpt.write_json(tmp / ckpt.CONFIG_FILENAME, state.config.to_dict())
        ckpt.write_json(tmp / ckpt.SETTINGS_FILENAME, state.settings)
    index = accelerator.process_index
    ckpt.write_json(tmp / f"{ckpt.PROMPT_RNG_PREFIX}{index}.json", state.prompt_rng.to_json())
    callables = {
        "prompt_function": state_of(state.prompt_function),
        "reward_function": state_of(state.reward_function),
    }
    if state.objective is not None and is_stateful(state.objective):
        callables["objective"] = state_of(state.objective)
    ckpt.write_json(tmp / f"{ckpt.CALLABLE_STATE_PREFIX}{index}.json", callables)
    accelerator.wait_for_everyone()
    final = tmp.parent / ckpt.checkpoint_name(epoch)
    if accelerator.is_main_process:
        final = ckpt.finalize_checkpoint(tmp, epoch=epoch, global_step=global_step)
        for path in ckpt.prune_checkpoints(output_dir, limit=state.config.num_checkpoint_limit):
            logger.info("deleted old checkpoint %s", path)
    accelerator.wait_for_everyone()
    return final


def load(
    state: RunState, path: Path, *, hashes_checked: bool = False
) -> tuple[ckpt.CheckpointInfo, PromptRNG]:
    """Restore a complete checkpoint into ``state``'s parameters, optimizer, tracker and
    callables (``hashes_checked``: its files' hashes were verified already, skip re-reading).

    Returns:
        The checkpoint's marker and the prompt function's random stream to continue.

    Raises:
        FileNotFoundError: ``path`` is not a complete checkpoint.
        ckpt.CheckpointError: a file is missing, damaged or does not fit this run.
    """
    info = ckpt.read_marker(path)
    if info is None:
        raise FileNotFoundError(f"{path} is not a complete checkpoint folder")
    accelerator = state.accelerator
    ckpt.verify_checkpoint(
        info.path, num_processes=accelerator.num_processes, hashes=not hashes_checked
    )
    # accelerate's load_state swallows any error with the RNG states: checked here first.
    ckpt.check_rng_state(info.path, accelerator.process_index)
    weights = _read_weights(info.path / ckpt.WEIGHTS_FILENAME)
    named = state.parameters
    missing = sorted(set(named) - set(weights))
    unexpected = sorted(set(weights) - set(named))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {info.path} does not match the pipeline's trainable parameters "
            f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
            f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}); was it written with "
            "the same model and LoRA setting?"
        )
    with torch.no_grad():
        for name, param in named.items():
            value = weights[name].to(device=param.device, dtype=param.dtype)
            if isinstance(param, DTensor):  # this process's shard of the full tensor
                value = distribute_tensor(value, param.device_mesh, param.placements)
            param.copy_(value)
    if state.ema is not None:
        ema_file = info.path / ckpt.EMA_WEIGHTS_FILENAME
        if not ema_file.is_file():
            raise ckpt.CheckpointError(
                f"checkpoint file {ema_file} is missing (a run with ema_decay needs a checkpoint "
                "that has its EMA weights); resume from another checkpoint"
            )
        state.ema.load(_read_weights(ema_file))
    if state.objective is not None and has_hook(state.objective, "load_tensor_state_dict"):
        tensors_file = info.path / ckpt.OBJECTIVE_TENSORS_FILENAME
        if not tensors_file.is_file():
            raise ckpt.CheckpointError(
                f"checkpoint file {tensors_file} is missing ({type(state.objective).__name__} "
                "keeps tensors, e.g. DiffusionNFT's old policy, that a resume needs); resume "
                "from a checkpoint of the same algorithm"
            )
        state.objective.load_tensor_state_dict(_read_weights(tensors_file))
    try:
        accelerator.load_state(str(info.path))
    except Exception as err:
        raise ckpt.CheckpointError(
            f"the optimizer, scaler or RNG state files in {info.path} cannot be loaded "
            f"({type(err).__name__}: {err}); resume from an earlier checkpoint"
        ) from err
    index = accelerator.process_index
    prompt_rng = PromptRNG.from_json(
        ckpt.read_json(info.path / f"{ckpt.PROMPT_RNG_PREFIX}{index}.json")
    )
    tracker_state = ckpt.read_json(info.path / ckpt.TRACKER_FILENAME)
    if state.stat_tracker is not None and tracker_state is not None:
        state.stat_tracker.load_state_dict(tracker_state)
    functions = {"prompt_function": state.prompt_function, "reward_function": state.reward_function}
    if state.objective is not None:
        functions["objective"] = state.objective
    load_callable_states(info.path, index, functions)
    return info, prompt_rng


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's safetensors file, or `ckpt.CheckpointError` naming it."""
    try:
        return safetensors.torch.load_file(str(path))
    except Exception as err:  # safetensors raises its own error type for a damaged header
        raise ckpt.CheckpointError(
            f"checkpoint file {path} cannot be read ({type(err).__name__}: {err}); "
            "resume from an earlier checkpoint"
        ) from err


def load_callable_states(folder: Path, process_index: int, functions: dict[str, Any]) -> None:
    """Load process ``process_index``'s saved states of the prompt and reward functions
    (``functions``: ``{"prompt_function": fn, "reward_function": fn}``, either may be left
    out) into them. Cheap: ``ddpo train`` runs it on its prompt function before the model loads.

    Raises:
        ckpt.CheckpointError: a state is missing, or does not fit its function (another prompt
            set, pool or repeat count than the run was started with; the message says which).
    """
    states_file = folder / f"{ckpt.CALLABLE_STATE_PREFIX}{process_index}.json"
    if states_file.is_file():
        _load_callable_states(ckpt.read_json(states_file), functions, states_file)
    elif any(is_stateful(fn) for fn in functions.values()):
        raise ckpt.CheckpointError(
            f"checkpoint {folder} has no {states_file.name}, but the prompt or reward "
            "function keeps state (state_dict/load_state_dict); it was written by an older "
            "version, so this run cannot resume exactly from it"
        )


def _load_callable_states(states: dict[str, Any], functions: dict[str, Any], source: Path) -> None:
    for key, fn in functions.items():
        state = states.get(key)
        label = key.replace("_", " ")
        if state is None and is_stateful(fn):
            raise ckpt.CheckpointError(
                f"{source} holds no state for the {label} {callable_name(fn)}, which keeps "
                "state (state_dict/load_state_dict): the checkpoint was written with another "
                "function; resume with the function that wrote it"
            )
        if state is not None:
            if not is_stateful(fn):
                raise ckpt.CheckpointError(
                    f"{source} holds a state for the {label}, but {callable_name(fn)} has no "
                    "load_state_dict: resume with the function that wrote the checkpoint"
                )
            try:
                fn.load_state_dict(state)
            except (ValueError, TypeError, KeyError) as err:
                raise ckpt.CheckpointError(
                    f"the {label}'s state in {source} does not fit {callable_name(fn)}: {err}"
                ) from err


def full_tensor(param: torch.Tensor) -> torch.Tensor:
    """``param`` detached, gathered from every process if FSDP2 shards it (a DTensor: then a
    collective that every process must call)."""
    return (param.full_tensor() if isinstance(param, DTensor) else param).detach()


@contextlib.contextmanager
def gathered_parameters(module: torch.nn.Module) -> Iterator[None]:
    """Within the block, ``module``'s FSDP2-sharded parameters (DTensors) are replaced by their
    whole tensors, gathered from every process (a collective: enter it on every process);
    the shards are put back on exit. Without sharded parameters it does nothing."""
    swapped: list[tuple[torch.nn.Module, str, torch.nn.Parameter]] = []
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if isinstance(param, DTensor):
                whole = torch.nn.Parameter(param.full_tensor().detach(), requires_grad=False)
                sub._parameters[name] = whole
                swapped.append((sub, name, param))
    try:
        yield
    finally:
        for sub, name, param in swapped:
            sub._parameters[name] = param


def skip_model_weights(models: list[Any], weights: list[Any], output_dir: str) -> None:
    """accelerate ``save_state`` pre-hook: the trainable parameters are written by `save`."""
    weights.clear()


def skip_model_loading(models: list[Any], input_dir: str) -> None:
    """accelerate ``load_state`` pre-hook: the trainable parameters are read by `load`."""
    models.clear()


__all__ = [
    "POLICY_SETTINGS",
    "RunState",
    "full_tensor",
    "gathered_parameters",
    "load",
    "load_callable_states",
    "policy_settings",
    "save",
    "skip_model_loading",
    "skip_model_weights",
]
