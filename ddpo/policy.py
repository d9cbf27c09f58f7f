"""The typed boundary between the trainer and a model family: what DDPO needs of a diffusion model.

The trainer speaks to every model family (Stable Diffusion 1.x/2.x, SDXL, SD3/SD3.5 and FLUX.1,
and the next ones) through `DiffusionPolicy` alone, and carries a family's text conditioning as
an opaque `Conditioning`. A family implements the protocol; ``DDPOStableDiffusionPipeline`` (TRL's
interface) implements it for Stable Diffusion from TRL's members, so a TRL-style pipeline trains
unchanged.

What a new family writes (see CONTRIBUTING.md):

- ``encode``: prompts (and the negative prompt) to a `Conditioning` whose tensors all have the
  batch first (SD: the prompt and negative embeddings; SDXL adds pooled embeddings and time ids);
- ``rollout``: sample trajectories with the per-step log-probs (`PolicyRollout`);
- ``score``: the log-probs of stored transitions through a given (trainable, maybe DDP-wrapped)
  denoiser, with its step's mean and standard deviation (for the KL term);
- ``reference_policy``: a context under which ``score`` gives the pre-fine-tuning policy;
- ``denoiser``, ``get_trainable_layers``, ``prepare``, ``check_num_steps``,
  ``transitions_per_rollout``, ``save_pretrained``;
- optionally ``preferred_advantage_mode`` (e.g. ``"group"``): what ``DDPOConfig.advantage_mode
  = "auto"`` resolves to for this family when per-prompt tracking is off (default: TRL's
  ``"global"``);
- optionally ``guidance_kind`` (:data:`GuidanceKind`): ``"classifier_free"`` (the default, as
  TRL's Stable Diffusion interface) when a guidance scale above 1 mixes a conditional and an
  unconditional prediction, so that re-scoring without guidance (``DDPOConfig.train_cfg=False``)
  is not the policy that sampled; ``"embedded"`` when the scale is an input of the model's one
  pass (guidance-distilled FLUX.1-dev), which re-scores as it sampled either way;
- optionally ``kl_conventions``: the ``DDPOConfig.kl_convention`` values its ``score`` supports
  (default ``("exact",)``; the flow policies add ``"flow_grpo"`` and return
  ``StepScore.flow_grpo_std_dev``);
- optionally ``uses_sample_eta`` (default True): False for a sampler that has no DDIM eta (the
  flow policies), so that a ``DDPOConfig.sample_eta`` other than 1.0 is refused, not ignored;
- optionally ``compile_regions``: the class names of the denoiser's repeated blocks that
  ``DDPOConfig.compile_denoiser`` compiles (default: the diffusers model's ``_repeated_blocks``);
- optionally a keyword ``initial_noise_generators`` of ``rollout``
  (``Sequence[torch.Generator] | None = None``): one generator per row that draws the row's
  initial noise ``x_T`` (the steps' noise still comes from ``generator``), which
  ``DDPOConfig.sample_same_latent`` needs (`accepts_initial_noise`; the flow policies take it).
"""

import contextlib
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol, cast, get_args, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from ddpo._typing import PerSample, Trajectory

GuidanceKind = Literal["classifier_free", "embedded"]
"""How a policy applies its guidance scale (the optional ``guidance_kind`` member of a policy)."""


def guidance_kind(policy: Any) -> GuidanceKind:
    """``policy.guidance_kind``, or ``"classifier_free"`` for a policy (or class) without it.

    Raises:
        ValueError: if it is set to something else than a `GuidanceKind`.
    """
    kind = getattr(policy, "guidance_kind", "classifier_free")
    if kind not in get_args(GuidanceKind):
        raise ValueError(
            f"{getattr(policy, '__name__', type(policy).__name__)}.guidance_kind must be one of "
            f"{get_args(GuidanceKind)}, got {kind!r}"
        )
    return cast(GuidanceKind, kind)


@dataclass(frozen=True)
class Conditioning:
    """A model family's per-sample conditioning: named tensors, each with the batch first.

    The trainer only stores, selects, concatenates and moves it; the family that made it reads
    it. Stable Diffusion's has ``prompt_embeds`` and ``negative_prompt_embeds``.
    """

    tensors: Mapping[str, Tensor]

    def __post_init__(self) -> None:
        sizes = {name: int(t.shape[0]) for name, t in self.tensors.items()}
        if not sizes:
            raise ValueError("Conditioning needs at least one tensor")
        if len(set(sizes.values())) != 1:
            raise ValueError(f"Conditioning tensors must share the batch size, got {sizes}")

    def __getitem__(self, name: str) -> Tensor:
        return self.tensors[name]

    def __len__(self) -> int:
        return int(next(iter(self.tensors.values())).shape[0])

    def select(self, index: Int[Tensor, " rows"] | slice) -> "Conditioning":
        """The rows ``index`` of every tensor."""
        return Conditioning({name: t[index] for name, t in self.tensors.items()})

    @staticmethod
    def cat(parts: Sequence["Conditioning"]) -> "Conditioning":
        """The rows of ``parts`` one after another (the same names in each)."""
        names = list(parts[0].tensors)
        if any(list(p.tensors) != names for p in parts):
            raise ValueError("Conditioning.cat: parts have different tensor names")
        return Conditioning({n: torch.cat([p.tensors[n] for p in parts]) for n in names})


class PolicyRollout(NamedTuple):
    """Sampled trajectories, with the ``K`` transitions the policy records for training
    (``K = T``, every step, for DDIM families; a window of consecutive steps for a flow policy).

    Attributes:
        images: decoded images, float ``(batch, 3, H, W)`` in ``[0, 1]``.
        latents: the latents around the recorded transitions, ``(batch, K + 1, ...)``
            (every latent, ``x_T`` first, when ``K = T``).
        log_probs: the log-density of each recorded transition, ``(batch, K)``.
        timesteps: what identifies each transition to ``score``, in sampling order, ``(K,)``:
            the scheduler's timesteps (DDIM) or the step indices (flow policies).
    """

    images: Float[Tensor, "batch 3 height width"]
    latents: Tensor
    log_probs: Trajectory
    timesteps: Int[Tensor, " steps"]


@runtime_checkable
class StepScore(Protocol):
    """What ``score`` returns: the transitions' log-probs and the step's Gaussian (its ``mean``
    and its true standard deviation ``std_dev``, for ``DDPOConfig.kl_convention="exact"``).

    A policy that offers Flow-GRPO's KL convention (``"flow_grpo"`` in its optional
    ``kl_conventions`` member) also returns ``flow_grpo_std_dev`` ``(batch,)``: the standard
    deviation Flow-GRPO's penalty divides by (`ddpo.core.flow_grpo_kl`), its step function's
    ``std_dev_t``; for its ``"sde"`` step the coefficient before the step size ``sqrt(-dt)``.
    """

    @property
    def log_prob(self) -> PerSample: ...

    @property
    def mean(self) -> Tensor: ...

    @property
    def std_dev(self) -> PerSample: ...


@runtime_checkable
class DiffusionPolicy(Protocol):
    """What the trainer needs of a model family (and nothing more)."""

    @property
    def denoiser(self) -> nn.Module:
        """The network whose parameters train (the trainer prepares it with accelerate)."""
        ...

    def get_trainable_layers(self) -> Any:
        """The module or parameters of ``denoiser`` that the optimizer trains."""
        ...

    def prepare(self, device: torch.device, *, gradient_checkpointing: bool) -> None:
        """Move to ``device``, freeze what does not train, switch checkpointing on if asked."""
        ...

    def check_num_steps(self, num_steps: int) -> None:
        """ValueError naming ``DDPOConfig.sample_num_steps`` if the sampler cannot make them."""
        ...

    def transitions_per_rollout(self, num_steps: int) -> int:
        """How many transitions a rollout of ``num_steps`` steps records for training:
        ``num_steps`` for DDIM families; the stochastic window's length for a flow policy that
        samples only a window of steps with its SDE (the others are deterministic ODE steps)."""
        ...

    def encode(self, prompts: Sequence[str], negative_prompt: str) -> Conditioning:
        """The conditioning of ``prompts`` (and of the negative prompt, for guidance)."""
        ...

    def rollout(
        self,
        conditioning: Conditioning,
        *,
        num_steps: int,
        guidance_scale: float,
        eta: float,
        generator: torch.Generator,
    ) -> PolicyRollout:
        """Sample one trajectory per row of ``conditioning``, with the log-prob of each of the
        ``transitions_per_rollout(num_steps)`` recorded transitions."""
        ...

    def score(
        self,
        conditioning: Conditioning,
        latents: Tensor,
        next_latents: Tensor,
        timesteps: Int[Tensor, " batch"],
        *,
        guidance_scale: float,
        guided: bool,
        eta: float,
        denoiser: nn.Module | None = None,
    ) -> StepScore:
        """Log-probs of stored transitions ``latents -> next_latents`` at ``timesteps`` through
        ``denoiser`` (default: ``self.denoiser``), with guidance when ``guided``."""
        ...

    def reference_policy(self) -> contextlib.AbstractContextManager[Any]:
        """A context under which ``score`` computes the policy before fine-tuning."""
        ...

    def save_pretrained(self, output_dir: str) -> None:
        """Save the fine-tuned model in its family's on-disk format."""
        ...


def accepts_initial_noise(policy: Any) -> bool:
    """Whether ``policy.rollout`` takes the optional ``initial_noise_generators`` keyword."""
    rollout = getattr(policy, "rollout", None)
    if rollout is None:
        return False
    try:
        parameters = inspect.signature(rollout).parameters
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        return False
    return "initial_noise_generators" in parameters


def missing_members(obj: Any) -> list[str]:
    """The `DiffusionPolicy` members ``obj`` lacks (empty when it implements the boundary)."""
    names = [
        "denoiser",
        "get_trainable_layers",
        "prepare",
        "check_num_steps",
        "transitions_per_rollout",
        "encode",
        "rollout",
        "score",
        "reference_policy",
        "save_pretrained",
    ]
    return [name for name in names if not hasattr(obj, name)]


__all__ = [
    "Conditioning",
    "DiffusionPolicy",
    "GuidanceKind",
    "PolicyRollout",
    "StepScore",
    "accepts_initial_noise",
    "guidance_kind",
    "missing_members",
]
