"""What an objective is: the loss of one algorithm over a micro-batch of an epoch's samples.

`ddpo.trainer.DDPOTrainer` samples, rewards and turns rewards into advantages; then, for each
micro-batch of the shuffled samples, it asks its objective for ``terms`` losses (one backward
pass each, gradients accumulated over them and over ``train_gradient_accumulation_steps``
micro-batches) and steps the optimizer. An objective declares what it needs of the epoch's
rollouts (`ObjectiveNeeds`) and computes ``loss, metrics`` from `ddpo.core` functions and the
`ddpo.policy.DiffusionPolicy` members, through the `ObjectiveContext` it is given.

An objective may also implement any of these optional members (`HOOKS`; the trainer calls
them where they exist, through the functions below, and does nothing where they do not):

- ``check_policy(policy)``: raise (TypeError or ValueError, naming what is missing) for a
  policy the objective cannot train, before any model work;
- ``epoch_rows(context) -> samples``: with ``needs.rollout`` False, the epoch's training rows on
  this process (``context.process_index`` of ``context.num_processes``), in place of sampled
  ones: as many as a sampled epoch's (``sample_batch_size * sample_num_batches_per_epoch``,
  ``context.rows_per_epoch``);
- ``prepare_epoch(context, samples) -> samples``: once per epoch, after the advantages and
  before the first update, with the weights that sampled (``context.inner_epoch`` is -1): it
  may attach per-sample tensors to ``samples.extras`` (AWM's noise and old surrogate) or return
  other rows (Diffusion-DPO's pairs: any number of rows, at least one per training
  micro-batch, which the trainer then splits as evenly as it can);
- ``end_epoch(context, global_step)``: after the epoch's updates (DiffusionNFT's old policy);
- ``sampling_weights(parameters) -> context manager``: the weights the epoch samples with, in
  place of the trained ones within the block (DiffusionNFT samples with its old policy);
- ``state_dict()`` / ``load_state_dict(state)`` (JSON data) and ``tensor_state_dict()`` /
  ``load_tensor_state_dict(tensors)`` (named tensors, saved as safetensors): checkpointed with
  the run and restored on resume.
"""

import contextlib
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ddpo._seeds import derive_seed
from ddpo.policy import DiffusionPolicy
from ddpo.samples import Trajectories


@dataclass(frozen=True)
class ObjectiveNeeds:
    """What an objective needs from an epoch's rollouts.

    Attributes:
        transitions: the recorded transitions with their log-probs and schedule values
            (``Trajectories.latents``, ``next_latents``, ``log_probs``, ``schedule``), of which
            the trainer keeps ``train_timestep_fraction`` per sample; False: they are dropped
            after sampling (0 steps), saving their memory.
        final: the final latents and the images (``Trajectories.final_latents``, ``images``).
        grad_steps: the objective samples in its loss a rollout whose last ``grad_steps`` steps
            keep their graph (reward backpropagation); the trainer checks that the policy's
            ``sample_num_steps`` allow it.
        rollout: the trainer samples and rewards an epoch of rollouts (True); False: the
            objective brings each epoch's rows itself (``epoch_rows``, e.g. offline preference
            data), and nothing is sampled or rewarded.
    """

    transitions: bool = True
    final: bool = False
    grad_steps: int = 0
    rollout: bool = True

    def __post_init__(self) -> None:
        for name in ("transitions", "final", "rollout"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"ObjectiveNeeds.{name} must be True or False")
        if isinstance(self.grad_steps, bool) or not isinstance(self.grad_steps, int):
            raise TypeError(f"ObjectiveNeeds.grad_steps must be an int, got {self.grad_steps!r}")
        if self.grad_steps < 0:
            raise ValueError(f"ObjectiveNeeds.grad_steps must be >= 0, got {self.grad_steps}")


@dataclass(frozen=True)
class ObjectiveContext:
    """What an objective's loss may use besides its micro-batch.

    Attributes:
        policy: the model family's policy.
        denoiser: the trained denoiser as prepared by accelerate (DDP-wrapped when distributed):
            pass it as ``denoiser=`` to ``policy.score`` / ``policy.predict`` so that gradients
            are all-reduced; the policy's own ``denoiser`` is the same parameters, unwrapped.
        autocast: the accelerator's autocast context factory (mixed precision).
        seed_keys: what `generator` is seeded from: the run's seed, the objective's stream, the
            process, the epoch, the inner epoch, the micro-batch and the term.
        epoch, inner_epoch: where training is (``inner_epoch`` -1 in ``prepare_epoch`` and
            ``end_epoch``).
        parameters: the trained parameters by name, by reference (an objective that keeps
            copies of them, as DiffusionNFT's old policy, reads and swaps them).
        micro_batch_size: the epoch's training micro-batch size (``prepare_epoch`` batches its
            own model calls with it).
        process_index, num_processes: this process among the run's.
        rows_per_epoch: the rows an epoch trains on each process (``epoch_rows``).
    """

    policy: DiffusionPolicy
    denoiser: nn.Module
    autocast: Callable[[], contextlib.AbstractContextManager[Any]]
    seed_keys: tuple[int, ...]
    epoch: int
    inner_epoch: int
    parameters: Mapping[str, nn.Parameter] = field(default_factory=dict)
    micro_batch_size: int = 1
    process_index: int = 0
    num_processes: int = 1
    rows_per_epoch: int = 0

    @functools.cached_property
    def generator(self) -> torch.Generator:
        """A CPU generator seeded from `seed_keys`, made on first use (an objective without
        randomness costs nothing): the objective's noise and timesteps are the same in a
        resumed run."""
        return torch.Generator().manual_seed(derive_seed(*self.seed_keys))

    def reference(self) -> contextlib.AbstractContextManager[Any]:
        """No gradients, the policy before fine-tuning, and the accelerator's autocast."""
        stack = contextlib.ExitStack()
        stack.enter_context(torch.no_grad())
        stack.enter_context(self.policy.reference_policy())
        stack.enter_context(self.autocast())
        return stack


class ObjectiveLoss(NamedTuple):
    """A term's loss (0-d, with gradients) and its detached diagnostics (0-d tensors, averaged
    per optimizer step over terms, micro-batches and processes, logged as ``train/<name>``).

    A diagnostic named `ON_POLICY_KEY` (``max |log_prob - old_log_prob|``) is not logged: the
    trainer checks with it that the policy re-scoring the samples before the epoch's first
    update is the one that drew them (``DDPOConfig.on_policy_tolerance``)."""

    loss: Tensor
    metrics: dict[str, Tensor]


ON_POLICY_KEY = "max_abs_log_ratio"
"""The diagnostic that feeds the trainer's on-policy check (see `ObjectiveLoss`)."""


@runtime_checkable
class Objective(Protocol):
    """One algorithm's loss over a micro-batch (see the module docstring).

    An objective may keep state across epochs; with ``state_dict()`` (JSON data) and
    ``load_state_dict(state)`` it is saved in checkpoints and restored on resume.
    """

    @property
    def needs(self) -> ObjectiveNeeds:
        """What the objective needs from the epoch's rollouts."""
        ...

    def terms(self, kept_transitions: int) -> int:
        """Backward passes per micro-batch when each sample keeps ``kept_transitions``
        transitions (a policy gradient: one per kept transition)."""
        ...

    def loss(self, context: ObjectiveContext, batch: Trajectories, term: int) -> ObjectiveLoss:
        """The loss of term ``term`` (``0 .. terms - 1``) of micro-batch ``batch`` (with its
        ``advantages``); the trainer backpropagates it."""
        ...


HOOKS = (
    "check_policy",
    "epoch_rows",
    "prepare_epoch",
    "end_epoch",
    "sampling_weights",
    "tensor_state_dict",
    "load_tensor_state_dict",
)
"""The optional members of an objective (see the module docstring)."""


def has_hook(objective: object, name: str) -> bool:
    """Whether ``objective`` implements the optional member ``name`` (one of `HOOKS`)."""
    if name not in HOOKS:
        raise AttributeError(f"{name!r} is not an optional objective member (see HOOKS)")
    return callable(getattr(objective, name, None))


def prepare_epoch(
    objective: object, context: ObjectiveContext, samples: Trajectories
) -> Trajectories:
    """``objective.prepare_epoch(context, samples)``, or ``samples`` where it has none."""
    if not has_hook(objective, "prepare_epoch"):
        return samples
    prepared = objective.prepare_epoch(context, samples)  # type: ignore[attr-defined]
    if not isinstance(prepared, Trajectories):
        raise TypeError(
            f"{type(objective).__name__}.prepare_epoch must return Trajectories, got "
            f"{type(prepared).__name__}"
        )
    return prepared


def epoch_rows(objective: object, context: ObjectiveContext) -> Trajectories:
    """``objective.epoch_rows(context)`` (an objective whose ``needs.rollout`` is False).

    Raises:
        TypeError: where it has none, or it returns something else than `Trajectories`.
    """
    if not has_hook(objective, "epoch_rows"):
        raise TypeError(
            f"{type(objective).__name__}.needs.rollout is False, so it must implement "
            "epoch_rows(context) (the epoch's rows in place of sampled ones)"
        )
    rows = objective.epoch_rows(context)  # type: ignore[attr-defined]
    if not isinstance(rows, Trajectories):
        raise TypeError(
            f"{type(objective).__name__}.epoch_rows must return Trajectories, got "
            f"{type(rows).__name__}"
        )
    return rows


def end_epoch(objective: object, context: ObjectiveContext, global_step: int) -> None:
    """``objective.end_epoch(context, global_step)`` where it has one."""
    if has_hook(objective, "end_epoch"):
        objective.end_epoch(context, global_step)  # type: ignore[attr-defined]


def sampling_weights(
    objective: object, parameters: Mapping[str, nn.Parameter]
) -> contextlib.AbstractContextManager[Any]:
    """``objective.sampling_weights(parameters)``, or no change where it has none."""
    if not has_hook(objective, "sampling_weights"):
        return contextlib.nullcontext()
    return objective.sampling_weights(parameters)  # type: ignore[attr-defined]


__all__ = [
    "HOOKS",
    "ON_POLICY_KEY",
    "Objective",
    "ObjectiveContext",
    "ObjectiveLoss",
    "ObjectiveNeeds",
    "end_epoch",
    "epoch_rows",
    "has_hook",
    "prepare_epoch",
    "sampling_weights",
]
