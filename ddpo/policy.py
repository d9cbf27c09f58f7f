"""The typed boundary between the trainer (and every objective) and a model family.

The trainer speaks to every model family (Stable Diffusion 1.x/2.x, SDXL, SD3/SD3.5, FLUX.1, and
the next ones) through `DiffusionPolicy` alone, and carries a family's text conditioning as an
opaque `Conditioning` and each recorded transition's schedule values as an opaque vector. A
family implements the protocol over one of two bases (``ddpo.adapters.ddim``,
``ddpo.adapters.flow``); ``DDPOStableDiffusionPipeline`` (TRL's interface) implements it for
Stable Diffusion from TRL's members, so a TRL-style pipeline trains unchanged.

What a policy offers (see CONTRIBUTING.md for a worked example of a new family):

- sampling: ``encode`` prompts to a `Conditioning`; ``rollout`` trajectories with the per-step
  log-probs of the transitions it records (`PolicyRollout`), at a per-call ``height`` and
  ``width``, optionally keeping the graph of its last ``grad_steps`` steps (reward
  backpropagation);
- re-scoring: ``score`` of stored transitions through a given (trainable, maybe DDP-wrapped)
  denoiser, from the transitions alone (each carries its schedule values, `PolicyRollout.
  schedule`): the same answer whatever was sampled since; ``reference_policy`` for the KL term;
- the denoiser as a model (for objectives that are not policy gradients): ``predict`` (its
  output at a noisy latent and timestep, in the family's ``prediction_type``), ``add_noise``
  (the forward process), ``training_target`` (what ``predict`` should output for a clean latent
  and its noise), ``decode`` (latents to images, differentiable);
- training: ``denoiser``, ``get_trainable_layers``, ``prepare``, ``check_num_steps``,
  ``transitions_per_rollout``, ``save_pretrained``.

The sampler's own settings (DDIM's ``eta``; a flow policy's noise level, SDE type and window)
belong to the policy; the trainer sets none of them per call. The optional members, with their
defaults, are those of `PolicyOptions`.
"""

import contextlib
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple, Protocol, cast, get_args, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from ddpo._typing import PerSample, Trajectory

GuidanceKind = Literal["classifier_free", "embedded"]
"""How a policy applies its guidance scale (the optional ``guidance_kind`` member of a policy)."""

PredictionType = Literal["epsilon", "v_prediction", "flow"]
"""What a denoiser predicts: the noise (epsilon), the velocity ``sqrt(alpha_bar) eps -
sqrt(1 - alpha_bar) x0`` (v_prediction), or the flow velocity ``eps - x0`` (flow)."""


class PolicyOptions:
    """The optional members of a policy and their defaults; a policy (or its class) overrides
    any of them as a class attribute. Read them with :func:`policy_option`.

    Attributes:
        guidance_kind: ``"classifier_free"`` when a guidance scale above 1 mixes a conditional
            and an unconditional prediction, so that re-scoring without guidance
            (``DDPOConfig.train_cfg=False``) is not the policy that sampled; ``"embedded"`` when
            the scale is an input of the model's one pass (guidance-distilled FLUX.1-dev).
        preferred_advantage_mode: what ``DDPOConfig.advantage_mode="auto"`` resolves to when
            per-prompt tracking is off (``None``: TRL's ``"global"``; flow policies ``"group"``).
        kl_conventions: the ``DDPOConfig.kl_convention`` values ``score`` supports (the flow
            policies add ``"flow_grpo"`` and return ``StepScore.flow_grpo_std_dev``).
        uses_sample_eta: whether the sampler has DDIM's ``eta`` (an attribute ``eta`` the trainer
            sets from ``DDPOConfig.sample_eta``); False for the flow policies, so that a
            ``sample_eta`` other than 1.0 is refused, not ignored.
        compile_regions: class names of the denoiser's repeated blocks that
            ``DDPOConfig.compile_denoiser`` compiles (``None``: the model's ``_repeated_blocks``).
        deterministic_images: the family's deterministic sampler, a method
            ``deterministic_images(prompts, *, negative_prompt, num_steps, guidance_scale,
            generators) -> images`` (float ``(batch, 3, H, W)`` in ``[0, 1]``, image ``i``'s
            initial noise drawn by ``generators[i]``): DDIM at ``eta=0`` for the DDIM families,
            the flow ODE for the flow families, as the stock pipelines sample. ``None``: the
            policy has none (`ddpo.evaluation.evaluate` then samples with :meth:`rollout`).
        sampling_timesteps: a method ``sampling_timesteps(num_steps) -> timesteps`` (float
            ``(num_steps,)``, in sampling order, in the units ``predict`` takes): the timesteps a
            rollout of ``num_steps`` steps visits, where DiffusionNFT and AWM train (both bases
            have it). ``None``: the policy has none, and those objectives refuse it.
        predicted_clean: a method ``predicted_clean(latents, prediction, timesteps) -> clean``:
            the clean latents that ``predict``'s output at noisy ``latents`` implies (affine in
            the prediction; both bases have it), which DiffusionNFT regresses. ``None``: none.
        encode_images: a method ``encode_images(images) -> latents``, the inverse of ``decode``:
            the final latents (those ``rollout`` ends in and ``decode`` takes, unpacked for
            FLUX) of images, float ``(batch, 3, H, W)`` in ``[0, 1]``: the VAE's posterior mean,
            normalised as the family's pipeline normalises (both bases have it), which
            Diffusion-DPO trains on (`ddpo.data.preferences`). ``None``: none.
        window_starts, set_window_start: methods ``window_starts(num_steps) -> range`` (the
            first steps a stochastic window of the policy's size can take) and
            ``set_window_start(start)`` (place it there for the next rollouts): MixGRPO's
            sliding window (``DDPOConfig.sde_window_schedule="sliding"``); the flow families
            have them. ``None``: the policy has no window to move.
    """

    guidance_kind: ClassVar[GuidanceKind] = "classifier_free"
    preferred_advantage_mode: ClassVar[str | None] = None
    kl_conventions: ClassVar[tuple[str, ...]] = ("exact",)
    uses_sample_eta: ClassVar[bool] = True
    compile_regions: ClassVar[tuple[str, ...] | None] = None
    deterministic_images: ClassVar[Any] = None
    sampling_timesteps: ClassVar[Any] = None
    predicted_clean: ClassVar[Any] = None
    window_starts: ClassVar[Any] = None
    set_window_start: ClassVar[Any] = None
    encode_images: ClassVar[Any] = None


def policy_option(policy: Any, name: str) -> Any:
    """The optional member ``name`` of ``policy`` (an instance or a class), or its default in
    `PolicyOptions`.

    Raises:
        AttributeError: if ``name`` is not an optional member.
    """
    if name not in vars(PolicyOptions).get("__annotations__", {}):
        raise AttributeError(f"{name!r} is not an optional policy member (see PolicyOptions)")
    return getattr(policy, name, getattr(PolicyOptions, name))


def guidance_kind(policy: Any) -> GuidanceKind:
    """``policy.guidance_kind``, or ``"classifier_free"`` for a policy (or class) without it.

    Raises:
        ValueError: if it is set to something else than a `GuidanceKind`.
    """
    kind = policy_option(policy, "guidance_kind")
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
        images: decoded images, float ``(batch, 3, H, W)`` in ``[0, 1]`` (a video family's
            videos ``(batch, frames, 3, H, W)``; with the graph of the last ``grad_steps`` steps
            when the rollout kept it).
        latents: the latents around the recorded transitions, ``(batch, K + 1, C, h, w)``
            (``(batch, K + 1, C, frames, h, w)`` for video; every latent, ``x_T`` first, when
            ``K = T``).
        log_probs: the log-density of each recorded transition, ``(batch, K)``.
        timesteps: what names each recorded transition, in sampling order, ``(K,)``, for logs
            and error messages: the scheduler's timesteps (DDIM), the step indices (flow).
        schedule: what ``score`` needs of each recorded transition besides its latents,
            ``(K, V)``: the step's schedule values and the sampler settings that shaped it
            (e.g. DDIM ``t``, ``t_prev``, ``eta`` and the guidance scale); opaque to the
            trainer, which stores it with the transition and passes each transition's row back.
        final_latents: the final latents ``x_0`` (what ``decode`` turns into ``images``);
            ``None`` where they are ``latents[:, -1]`` (a rollout that records every step).
    """

    images: Float[Tensor, "batch *frames 3 height width"]
    latents: Tensor
    log_probs: Trajectory
    timesteps: Int[Tensor, " steps"]
    schedule: Float[Tensor, "steps values"]
    final_latents: Tensor | None = None


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
    """What the trainer and the objectives need of a model family (and nothing more).

    Timesteps given to ``predict``, ``add_noise`` and ``training_target`` are in the units of
    the family's scheduler: DDIM's integer-valued ``0 .. num_train_timesteps - 1``; a flow
    policy's ``sigma * num_train_timesteps`` (diffusers' ``FlowMatchEulerDiscreteScheduler``
    timesteps, the transformer's input). Latents are those of ``rollout`` (unpacked for FLUX).
    """

    @property
    def denoiser(self) -> nn.Module:
        """The network whose parameters train (the trainer prepares it with accelerate)."""
        ...

    @property
    def prediction_type(self) -> PredictionType:
        """What ``predict`` outputs: ``"epsilon"``, ``"v_prediction"`` or ``"flow"``."""
        ...

    @property
    def num_train_timesteps(self) -> int:
        """The scheduler's training timestep count (the range of ``predict``'s timesteps)."""
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
        generator: torch.Generator,
        height: int | None = None,
        width: int | None = None,
        initial_noise_generators: Sequence[torch.Generator] | None = None,
        grad_steps: int = 0,
    ) -> PolicyRollout:
        """Sample one trajectory per row of ``conditioning`` with the policy's sampler, with the
        log-prob of each of the ``transitions_per_rollout(num_steps)`` recorded transitions.

        Args:
            height, width: the image size in pixels (``None``: the policy's resolution).
            initial_noise_generators: one generator per row that draws the row's ``x_T`` (the
                steps' noise still comes from ``generator``); ``DDPOConfig.sample_same_latent``.
            grad_steps: the number of final denoising steps whose graph is kept (each step's
                denoiser call checkpointed), so that the images are differentiable through
                them; 0 samples without gradients.
        """
        ...

    def score(
        self,
        conditioning: Conditioning,
        latents: Tensor,
        next_latents: Tensor,
        schedule: Float[Tensor, "batch values"],
        *,
        cfg: bool = True,
        denoiser: nn.Module | None = None,
    ) -> StepScore:
        """Log-probs of stored transitions ``latents -> next_latents`` with their ``schedule``
        rows (`PolicyRollout.schedule`) through ``denoiser`` (default: ``self.denoiser``).

        ``cfg=False`` (TRL's ``train_cfg=False``) leaves out the unconditional pass of
        classifier-free guidance; a policy whose guidance is embedded has no such pass."""
        ...

    def predict(
        self,
        conditioning: Conditioning,
        latents: Tensor,
        timesteps: Float[Tensor, " batch"],
        *,
        guidance_scale: float = 1.0,
        denoiser: nn.Module | None = None,
    ) -> Tensor:
        """The denoiser's output at noisy ``latents`` and ``timesteps``, in ``prediction_type``
        (classifier-free or embedded guidance at ``guidance_scale``; 1: the conditional one)."""
        ...

    def add_noise(self, clean: Tensor, noise: Tensor, timesteps: Float[Tensor, " batch"]) -> Tensor:
        """The forward process: clean latents noised to ``timesteps`` with ``noise``."""
        ...

    def training_target(
        self, clean: Tensor, noise: Tensor, timesteps: Float[Tensor, " batch"]
    ) -> Tensor:
        """What ``predict`` should output at ``add_noise(clean, noise, timesteps)``."""
        ...

    def decode(self, latents: Tensor) -> Float[Tensor, "batch 3 height width"]:
        """Images in ``[0, 1]`` (float32) of final latents, differentiable."""
        ...

    def reference_policy(self) -> contextlib.AbstractContextManager[Any]:
        """A context under which ``score`` and ``predict`` compute the policy before
        fine-tuning."""
        ...

    def save_pretrained(self, output_dir: str) -> None:
        """Save the fine-tuned model in its family's on-disk format."""
        ...


def accepts_initial_noise(policy: Any) -> bool:
    """Whether ``policy.rollout`` takes the ``initial_noise_generators`` keyword."""
    rollout = getattr(policy, "rollout", None)
    if rollout is None:
        return False
    try:
        parameters = inspect.signature(rollout).parameters
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        return False
    return "initial_noise_generators" in parameters


def protocol_members() -> tuple[str, ...]:
    """The members every `DiffusionPolicy` has, read from the protocol itself."""
    return tuple(
        sorted(
            name
            for name in (*vars(DiffusionPolicy), *vars(DiffusionPolicy).get("__annotations__", {}))
            if not name.startswith("_")
        )
    )


def missing_members(obj: Any) -> list[str]:
    """The `DiffusionPolicy` members ``obj`` lacks (empty when it implements the boundary)."""
    return [name for name in protocol_members() if not hasattr(obj, name)]


__all__ = [
    "Conditioning",
    "DiffusionPolicy",
    "GuidanceKind",
    "PolicyOptions",
    "PolicyRollout",
    "PredictionType",
    "StepScore",
    "accepts_initial_noise",
    "guidance_kind",
    "missing_members",
    "policy_option",
    "protocol_members",
]
