"""What the DDIM families share as policies (Stable Diffusion 1.x/2.x through TRL's interface,
SDXL): the sampler's own ``eta``, the schedule rows a rollout records and the re-scoring of a
transition from its row alone.

A DDIM transition's row is ``[t, t_prev, eta, guidance_scale]`` (:data:`DDIM_SCHEDULE_COLUMNS`):
the step's timestep and its predecessor (``t - num_train_timesteps // num_inference_steps``,
negative at the last step), the ``eta`` and the guidance scale it was sampled with. Re-scoring
reads the scheduler's fixed tables (``alphas_cumprod``, ``final_alpha_cumprod``, its config)
and nothing that the next ``set_timesteps`` changes, so a stored batch scores the same whatever
was sampled since.
"""

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final, NamedTuple

import torch
from jaxtyping import Float, Int, Real
from torch import Tensor

from ddpo._typing import Latents, PerSample
from ddpo.adapters.common.args import check_one_generator_per_prompt
from ddpo.adapters.common.sampling import check_schedule, schedule_rows
from ddpo.adapters.ddim.denoiser import (
    DDIMPredictionType,
    ddim_add_noise,
    ddim_num_train_timesteps,
    ddim_predicted_clean,
    ddim_prediction_type,
    ddim_training_target,
    vae_encode,
)
from ddpo.adapters.ddim.sampling import check_ddim_num_steps, check_eta
from ddpo.adapters.ddim.scheduling import check_ddim_scheduler, ddim_alpha_bars_between
from ddpo.core import DDIMStepOutput, ddim_step_with_logprob

DDIM_SCHEDULE_COLUMNS: Final[tuple[str, ...]] = ("t", "t_prev", "eta", "guidance_scale")
"""The values of a DDIM transition's schedule row, in order."""


class DDIMRows(NamedTuple):
    """A batch of DDIM schedule rows as the tensors scoring uses: the timesteps and their
    predecessors (int64), and the ``eta`` and guidance scale of each row (float64)."""

    timesteps: Int[Tensor, " batch"]
    prev_timesteps: Int[Tensor, " batch"]
    eta: PerSample
    guidance_scale: PerSample


def ddim_schedule_rows(
    scheduler: Any, *, eta: float, guidance_scale: float, device: torch.device
) -> Float[Tensor, "steps 4"]:
    """The ``(T, 4)`` rows of a DDIM rollout just sampled with ``scheduler`` (after its
    ``set_timesteps``): ``[t, t_prev, eta, guidance_scale]`` per step, in sampling order.

    ``t_prev`` is computed as diffusers' ``DDIMScheduler.step`` computes it, in int64.

    Raises:
        TypeError, ValueError: if the scheduler is not DDIM-like or its timesteps are not set.
    """
    check_ddim_scheduler(scheduler)
    t = torch.as_tensor(scheduler.timesteps).to(device).long()
    prev = t - int(scheduler.config.num_train_timesteps) // int(scheduler.num_inference_steps)
    settings = torch.tensor([float(eta), float(guidance_scale)], dtype=torch.float64)
    eta_column, guidance_column = settings.to(device).expand(len(t), 2).unbind(dim=1)
    return schedule_rows([t, prev, eta_column, guidance_column], device)


def ddim_rows(schedule: Any, latents: Latents) -> DDIMRows:
    """``schedule`` (one DDIM row per sample of ``latents``) checked and split into the tensors
    of :class:`DDIMRows`, on ``latents``' device.

    Raises:
        TypeError, ValueError: naming ``schedule`` (see
            :func:`ddpo.adapters.common.sampling.check_schedule`).
    """
    rows = check_schedule(schedule, latents, DDIM_SCHEDULE_COLUMNS, "a DDIM policy")
    return DDIMRows(
        rows[:, 0].long(),
        rows[:, 1].long(),
        rows[:, 2].to(torch.float64),
        rows[:, 3].to(torch.float64),
    )


def score_ddim_rows(
    scheduler: Any,
    model_output: Latents,
    latents: Latents,
    next_latents: Latents,
    rows: DDIMRows,
) -> DDIMStepOutput:
    """The log-prob of stored transitions ``latents -> next_latents`` under ``model_output``:
    :func:`ddpo.core.ddim_step_with_logprob` in scoring mode with each row's ``alpha_bar`` pair
    (:func:`ddpo.adapters.ddim.scheduling.ddim_alpha_bars_between`) and ``eta``, and the
    scheduler config's prediction type and clipping, as sampling took the step."""
    alpha_bar_t, alpha_bar_prev = ddim_alpha_bars_between(
        scheduler, rows.timesteps, rows.prev_timesteps
    )
    clip = scheduler.config.get("clip_sample", False)
    return ddim_step_with_logprob(
        model_output,
        latents,
        alpha_bar_t,
        alpha_bar_prev,
        eta=rows.eta,
        prediction_type=scheduler.config.get("prediction_type", "epsilon"),
        prev_sample=next_latents,
        clip_sample_range=float(scheduler.config.get("clip_sample_range", 1.0)) if clip else None,
    )


class DDIMPolicy:
    """The members every DDIM policy shares: ``eta`` (the sampler's stochasticity, which the
    trainer sets from ``DDPOConfig.sample_eta``), the step-count check, the transitions a
    rollout records (every step), and the denoiser's parameterisation, forward process and
    training target (each family writes its own ``predict`` and ``decode``). Mixed into TRL's
    interface and the SDXL policy, which provide ``scheduler``."""

    uses_sample_eta: ClassVar[bool] = True
    """The sampler has DDIM's ``eta`` (see `ddpo.policy.PolicyOptions`)."""

    _eta: float = 1.0

    if TYPE_CHECKING:

        @property
        def scheduler(self) -> Any:
            """The DDIM scheduler (the class this is mixed into provides it)."""

        @property
        def vae(self) -> Any:
            """The image autoencoder (the class this is mixed into provides it)."""

    @property
    def eta(self) -> float:
        """DDIM's stochasticity in ``(0, 1]`` used by :meth:`rollout` (1.0: DDPM's variance,
        DDPO's default), recorded in each transition's schedule row."""
        return self._eta

    @eta.setter
    def eta(self, value: float | int) -> None:
        check_eta(value)
        self._eta = float(value)

    def check_num_steps(self, num_steps: int) -> None:
        """ValueError naming ``DDPOConfig.sample_num_steps`` unless the DDIM scheduler makes
        ``num_steps`` valid timesteps (:func:`ddpo.adapters.ddim.sampling.
        check_ddim_num_steps`)."""
        check_ddim_num_steps(self.scheduler, num_steps)

    def transitions_per_rollout(self, num_steps: int) -> int:
        """Every DDIM step is recorded and may be trained: ``num_steps``."""
        return num_steps

    def sampling_timesteps(self, num_steps: int) -> Float[Tensor, " steps"]:
        """The timesteps a rollout of ``num_steps`` steps visits, in sampling order, in the
        units of :meth:`predict` (``set_timesteps(num_steps)`` of a copy of the scheduler; the
        policy's own is left as it is). DiffusionNFT and AWM train at them."""
        self.check_num_steps(num_steps)
        scheduler = type(self.scheduler).from_config(self.scheduler.config)
        scheduler.set_timesteps(num_steps)
        return scheduler.timesteps.to(torch.float32)

    # ---- the denoiser as a model (ddpo.adapters.ddim.denoiser), for other objectives -----

    @property
    def prediction_type(self) -> DDIMPredictionType:
        """What the UNet predicts, the scheduler config's ``prediction_type``: ``"epsilon"`` or
        ``"v_prediction"`` (ValueError naming it for another, e.g. ``"sample"``)."""
        return ddim_prediction_type(self.scheduler)

    @property
    def num_train_timesteps(self) -> int:
        """The scheduler config's ``num_train_timesteps`` (the range of the UNet's timesteps)."""
        return ddim_num_train_timesteps(self.scheduler)

    def add_noise(
        self, clean: Latents, noise: Latents, timesteps: Real[Tensor, " batch"]
    ) -> Latents:
        """The forward process ``sqrt(a_t) x_0 + sqrt(1 - a_t) eps`` at training timesteps
        ``timesteps``, ``a_t`` from the scheduler's ``alphas_cumprod``."""
        return ddim_add_noise(self.scheduler, clean, noise, timesteps)

    def training_target(
        self, clean: Latents, noise: Latents, timesteps: Real[Tensor, " batch"]
    ) -> Latents:
        """What :meth:`predict` should output at ``add_noise(clean, noise, timesteps)``: the
        noise (epsilon) or the velocity (v-prediction)."""
        return ddim_training_target(self.scheduler, clean, noise, timesteps)

    def predicted_clean(
        self, latents: Latents, prediction: Latents, timesteps: Real[Tensor, " batch"]
    ) -> Latents:
        """The clean latents that :meth:`predict`'s output ``prediction`` at noisy ``latents``
        and ``timesteps`` implies (``(x_t - sqrt(1 - a_t) eps) / sqrt(a_t)``, or ``sqrt(a_t)
        x_t - sqrt(1 - a_t) v``); affine in ``prediction``."""
        return ddim_predicted_clean(self.scheduler, latents, prediction, timesteps)

    def encode_images(self, images: Float[Tensor, "batch 3 image_height image_width"]) -> Latents:
        """The final latents that :meth:`decode` turns into ``images`` (float ``(batch, 3, H,
        W)`` in ``[0, 1]``): the VAE's posterior mean, normalised as the pipeline normalises
        (:func:`ddpo.adapters.ddim.denoiser.vae_encode`); float32, on the VAE's device. What
        Diffusion-DPO trains on (`ddpo.data.preferences`)."""
        return vae_encode(self.vae, images)


class StockDDIMImages:
    """``deterministic_images`` (`ddpo.policy.PolicyOptions`) for a DDIM policy that wraps a
    stock diffusers pipeline (``pipeline``): DDIM at ``eta=0`` through that pipeline, with the
    policy's denoiser (its LoRA adapters active) and its ``resolution`` where it has one."""

    if TYPE_CHECKING:

        @property
        def pipeline(self) -> Any:
            """The wrapped diffusers pipeline (the class this is mixed into provides it)."""

    @torch.no_grad()
    def deterministic_images(
        self,
        prompts: Sequence[str],
        *,
        negative_prompt: str = "",
        num_steps: int,
        guidance_scale: float,
        generators: Sequence[torch.Generator],
    ) -> Float[Tensor, "batch 3 height width"]:
        """Images in ``[0, 1]`` of ``prompts`` by deterministic DDIM (``eta=0``), image ``i``'s
        ``x_T`` drawn by ``generators[i]``: the stock pipeline's images for those generators."""
        check_one_generator_per_prompt(prompts, generators)
        size = getattr(self, "resolution", None)
        height, width = (None, None) if size is None else size
        out = self.pipeline(
            prompt=list(prompts),
            negative_prompt=[negative_prompt] * len(prompts) if negative_prompt else None,
            num_inference_steps=num_steps,
            guidance_scale=guidance_scale,
            eta=0.0,
            generator=list(generators),
            height=height,
            width=width,
            output_type="pt",
        )
        images: Tensor = out.images
        return images.float().clamp(0, 1)


__all__ = [
    "DDIM_SCHEDULE_COLUMNS",
    "DDIMPolicy",
    "DDIMRows",
    "StockDDIMImages",
    "ddim_rows",
    "ddim_schedule_rows",
    "score_ddim_rows",
]
