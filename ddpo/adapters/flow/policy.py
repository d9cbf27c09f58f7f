"""The flow-matching base policy (SD3, FLUX, Wan2.1): Flow-GRPO's SDE window inside an ODE
rollout, over image latents ``(batch, C, h, w)`` or video latents ``(batch, C, frames, h, w)``."""

import abc
import contextlib
import copy
from collections.abc import Sequence
from typing import Any, ClassVar, Literal, NamedTuple

import torch
from diffusers.utils.torch_utils import randn_tensor
from jaxtyping import Float, Real
from torch import Tensor, nn

from ddpo._typing import ImagesOrVideos, Latents, PerSample
from ddpo.adapters.common.args import (
    OUTPUT_TYPES,
    Size,
    check_call_size,
    check_grad_steps,
    check_one_generator_per_prompt,
    check_prompts,
)
from ddpo.adapters.common.denoiser import check_guidance_scale, check_images, check_predict_args
from ddpo.adapters.common.output import DDPOPipelineOutput
from ddpo.adapters.common.sampling import draw_initial_noise, scores_guided
from ddpo.adapters.common.wrapped import WrappedPipelinePolicy
from ddpo.adapters.flow.denoiser import (
    flow_add_noise_at,
    flow_decode_images,
    flow_model_timesteps,
    flow_num_train_timesteps,
    flow_predicted_clean,
    flow_training_target,
    flow_vae_encode,
)
from ddpo.adapters.flow.sampling import (
    FlowSchedule,
    FlowStepScore,
    Generators,
    check_noise_level,
    check_ode_has_no_window,
    check_post_window,
    check_sde_type,
    check_window,
    check_window_args,
    choose_window,
    decode_flow_latents,
    flow_rows,
    flow_schedule_rows,
    post_window_schedule,
    sample_flow_trajectory,
    score_flow_rows,
    stochastic_steps,
)
from ddpo.policy import Conditioning, PolicyRollout


class FlowSample(NamedTuple):
    """A flow sampling call: the pipeline output (the recorded latents and log-probs), the
    stochastic window (``None`` for the ODE everywhere), the schedule sampled with and the
    final latents."""

    output: DDPOPipelineOutput
    window: range | None
    schedule: FlowSchedule
    final_latents: Latents


class FlowPipelinePolicy(WrappedPipelinePolicy):
    """A flow-matching policy: Flow-GRPO's SDE steps inside a window of each rollout (recorded
    and trained), deterministic ODE steps outside it.

    Subclasses set ``noise_level``, ``sde_window_size``, ``sde_window_start`` and
    ``resolution`` (and, if not the defaults, ``sde_window_range`` and ``sde_type``), and
    implement the schedule, the latent shape, the size multiple and the velocity. A transition's
    schedule row is :data:`ddpo.adapters.flow.sampling.FLOW_SCHEDULE_COLUMNS`.
    """

    denoiser_name = "transformer"
    preferred_advantage_mode: ClassVar[str] = "group"
    """What ``DDPOConfig.advantage_mode="auto"`` becomes for this policy (GRPO's group
    advantages over repeated prompts, as Flow-GRPO trains)."""
    kl_conventions: ClassVar[tuple[str, ...]] = ("exact", "flow_grpo")
    """The ``DDPOConfig.kl_convention`` values `score` supports: its result carries
    ``flow_grpo_std_dev`` for Flow-GRPO's penalty beside the step's true ``std_dev``."""
    default_steps: ClassVar[int] = 28
    default_guidance: ClassVar[float] = 7.0
    uses_sample_eta: ClassVar[bool] = False
    """``DDPOConfig.sample_eta`` is DDIM's: the flow sampler is set by ``noise_level`` (and
    ``sde_type``, the window), so a ``sample_eta`` other than 1.0 is refused, not ignored."""

    noise_level: float
    sde_window_size: int | None
    sde_window_start: int | None
    sde_window_range: tuple[int, int] | None = None
    sde_type: str = "sde"
    post_window_solver: str = "euler"
    """The deterministic steps after the window: ``"euler"`` or MixGRPO-Flash's
    ``"dpmsolver++"`` (:data:`ddpo.adapters.flow.sampling.PostWindowSolver`)."""
    post_window_step_ratio: float = 1.0
    """MixGRPO-Flash's ``dpm_post_compress_ratio``: the steps after the window, compressed
    (:func:`ddpo.adapters.flow.sampling.post_window_schedule`); 1: as many as the schedule has."""
    resolution: Size

    _negative: tuple[str, Any] | None = None
    """The last negative prompt and its encoding (:meth:`_negative_encoding`)."""

    def _encode_texts(self, texts: list[str]) -> Any:
        """The family's text encoding of ``texts`` (a family with a negative prompt has one)."""
        raise NotImplementedError(f"{type(self).__name__} encodes no negative prompt")

    def _negative_encoding(self, negative_prompt: str) -> Any:
        """``_encode_texts([negative_prompt])``, kept for the next call with the same prompt
        (the run's negative prompt is encoded once)."""
        if self._negative is None or self._negative[0] != negative_prompt:
            self._negative = (negative_prompt, self._encode_texts([negative_prompt]))
        return self._negative[1]

    def _set_sampler(
        self,
        *,
        noise_level: float | int,
        sde_type: str,
        sde_window_size: int | None,
        sde_window_start: int | None,
        sde_window_range: tuple[int, int] | None,
        post_window_solver: str,
        post_window_step_ratio: float | int,
    ) -> None:
        """Check and set the sampler options every flow family's constructor takes (Flow-GRPO's
        noise level, SDE type and window, MixGRPO-Flash's steps after the window), before any
        weights load.

        Raises:
            ValueError: naming the option and its value.
        """
        self.sde_type = check_sde_type(sde_type)
        self.noise_level = check_noise_level(noise_level, allow_zero=True, sde_type=sde_type)
        self.sde_window_range = check_window_args(
            sde_window_size, sde_window_start, sde_window_range
        )
        check_ode_has_no_window(self.noise_level, sde_window_size, sde_window_range)
        self.sde_window_size, self.sde_window_start = sde_window_size, sde_window_start
        check_post_window(post_window_solver, post_window_step_ratio, sde_window_size)
        self.post_window_solver = post_window_solver
        self.post_window_step_ratio = float(post_window_step_ratio)

    @property
    def transformer(self) -> nn.Module:
        """The transformer (the denoiser)."""
        return self.denoiser

    @abc.abstractmethod
    def _flow_schedule(
        self,
        scheduler: Any,
        num_steps: int,
        device: torch.device | None = None,
        size: Size | None = None,
    ) -> FlowSchedule:
        """The sigmas and timesteps of ``num_steps`` steps for images of ``size`` (``None``: the
        resolution; the shift may depend on it), setting ``scheduler``'s timesteps."""

    @abc.abstractmethod
    def _latent_shape(self, batch: int, size: Size | None = None) -> tuple[int, ...]:
        """The (unpacked) initial latents' shape for ``batch`` images of ``size`` (``None``: the
        resolution): ``(batch, C, h, w)``, or a video family's ``(batch, C, frames, h, w)``."""

    @abc.abstractmethod
    def _size_multiple(self) -> tuple[int, str]:
        """What an image side must be a multiple of, and why (for the size checks)."""

    @abc.abstractmethod
    def _velocity(
        self,
        transformer: nn.Module,
        conditioning: Conditioning,
        x: Latents,
        t: PerSample,
        guidance_scale: float | PerSample,
        guided: bool,
    ) -> Latents:
        """The model's velocity at timesteps ``t`` (guided as the family guides; a per-sample
        scale is re-scoring's, whose rows sampled at or below 1 were not guided)."""

    def _noise_dtype(self, conditioning: Conditioning) -> torch.dtype:
        """The dtype the initial noise is drawn and the trajectory starts in: the text
        embeddings', as diffusers' SD3/FLUX pipelines draw it (a family whose stock pipeline
        draws float32, Wan2.1's, overrides it)."""
        dtype: torch.dtype = conditioning["prompt_embeds"].dtype
        return dtype

    def _decode_output(self, latents: Latents, output_type: str) -> Any:
        """Final latents decoded into ``output_type`` (``"latent"``: the latents themselves;
        ``"pt"``: float32 in ``[0, 1]``, what :meth:`decode` gives), as the family's stock
        pipeline decodes (SD3's and FLUX's VAE scaling here; a family with another VAE
        overrides it)."""
        return decode_flow_latents(self._sd, latents, output_type)

    def _call_size(self, height: int | None, width: int | None) -> Size:
        """A call's checked ``(height, width)`` (``None``: the side of the resolution)."""
        multiple, why = self._size_multiple()
        return check_call_size(height, width, default=self.resolution, multiple=multiple, why=why)

    def check_num_steps(self, num_steps: int) -> None:
        """ValueError naming ``DDPOConfig.sample_num_steps`` (and the window) if the window does
        not fit in ``num_steps`` or the schedule has no sigma below 1 for the SDE (any positive
        count for the ODE, ``noise_level=0``)."""
        if self.noise_level == 0:
            if num_steps < 1:
                raise ValueError(f"DDPOConfig.sample_num_steps must be >= 1, got {num_steps}")
            return
        check_window(num_steps, *self._window_args()[:3], sde_type=self.sde_type)
        if self._flow_schedule(copy.deepcopy(self.scheduler), num_steps).sigma_max is None:
            raise ValueError(
                f"DDPOConfig.sample_num_steps={num_steps}: the flow schedule has no sigma in "
                "(0, 1) for the SDE step; use at least 2 steps"
            )

    def transitions_per_rollout(self, num_steps: int) -> int:
        """``K``, the stochastic (recorded, trained) steps of a ``num_steps``-step rollout (0
        with ``noise_level=0``: the ODE records none)."""
        if self.noise_level == 0:
            self.check_num_steps(num_steps)
            return 0
        check_window(num_steps, *self._window_args()[:3], sde_type=self.sde_type)
        if self.sde_window_size is None:
            return stochastic_steps(num_steps, self.sde_type)
        return self.sde_window_size

    def sampling_timesteps(self, num_steps: int) -> Float[Tensor, " steps"]:
        """The timesteps a rollout of ``num_steps`` steps visits at the policy's resolution, in
        sampling order, in the units of :meth:`predict` (``sigma * num_train_timesteps``, the
        shift applied; a copy of the scheduler, the policy's own left as it is). DiffusionNFT
        and AWM train at them."""
        self.check_num_steps(num_steps)
        schedule = self._flow_schedule(copy.deepcopy(self.scheduler), num_steps)
        return schedule.timesteps.detach().to("cpu", torch.float32)

    def window_starts(self, num_steps: int) -> range:
        """The first steps the policy's stochastic window (``sde_window_size``) can take in a
        rollout of ``num_steps`` steps.

        Raises:
            ValueError: without a window (``sde_window_size`` None) or at ``noise_level=0``.
        """
        if self.sde_window_size is None or self.noise_level == 0:
            raise ValueError(
                "a sliding window needs the policy's sde_window_size (and noise_level > 0); "
                f"it has sde_window_size={self.sde_window_size!r}, noise_level="
                f"{self.noise_level!r}"
            )
        last = stochastic_steps(num_steps, self.sde_type)
        low, high = self.sde_window_range if self.sde_window_range is not None else (0, last)
        return range(low, min(high, last) - self.sde_window_size + 1)

    def set_window_start(self, start: int) -> None:
        """Place the stochastic window's first step at ``start`` for the next rollouts (checked
        against the step count when a rollout runs)."""
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ValueError(f"the window start must be an int >= 0, got {start!r}")
        self.sde_window_start = start

    def _window_args(self) -> tuple[int | None, int | None, tuple[int, int] | None, str]:
        """``sde_window_size``, ``sde_window_start``, ``sde_window_range`` and ``sde_type``."""
        return self.sde_window_size, self.sde_window_start, self.sde_window_range, self.sde_type

    def _sample(
        self,
        conditioning: Conditioning,
        *,
        num_steps: int,
        guidance_scale: float,
        noise_level: float,
        generator: Generators,
        size: Size | None = None,
        latents: Latents | None = None,
        output_type: str = "pt",
        grad_steps: int = 0,
    ) -> FlowSample:
        """Sample images of ``size`` (``None``: the resolution): the SDE window (``noise_level >
        0``) or the ODE everywhere (0); the last ``grad_steps`` steps and the decoding keep
        their graph."""
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if noise_level > 0:
            self.check_num_steps(num_steps)
        shape = self._latent_shape(len(conditioning), size)
        if latents is not None and tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        guided = guidance_scale > 1.0
        device = self.device
        with torch.no_grad():
            dtype = self._noise_dtype(conditioning)
            if latents is None:  # drawn in _noise_dtype, as the stock pipeline draws it
                latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
            x = latents.to(device=device, dtype=dtype)
            schedule = self._flow_schedule(self.scheduler, num_steps, device, size)
            window = None
            if noise_level > 0:
                length, start, bounds, sde_type = self._window_args()
                window = choose_window(
                    num_steps, length, start, generator, bounds, sde_type=sde_type
                )
                if length is not None:  # MixGRPO-Flash's fewer steps after the window
                    schedule = post_window_schedule(
                        schedule, window.stop, self.post_window_step_ratio
                    )

            def predict(x: Latents, t: PerSample) -> Latents:
                return self._velocity(self.transformer, conditioning, x, t, guidance_scale, guided)

            trajectory = sample_flow_trajectory(
                predict, x, schedule, window=window, noise_level=noise_level,
                generator=generator, progress=self._sd.progress_bar, sde_type=self.sde_type,
                grad_steps=grad_steps,
                post_window_solver=self.post_window_solver if window is not None else "euler",
            )  # fmt: skip
            with torch.enable_grad() if grad_steps else contextlib.nullcontext():
                images = self._decode_output(trajectory.final, output_type)
        output = DDPOPipelineOutput(images, trajectory.latents, trajectory.log_probs)
        return FlowSample(output, window, schedule, trajectory.final)

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
        """Sample one trajectory per row; record only the window's ``K`` SDE transitions:
        ``latents`` ``(batch, K + 1, C, h, w)``, ``log_probs`` ``(batch, K)``, ``timesteps``
        the K step indices (int64), ``schedule`` their rows
        (:data:`ddpo.adapters.flow.sampling.FLOW_SCHEDULE_COLUMNS`) and ``final_latents`` the
        last latents (after the window's end). The sampler is the policy's (``noise_level``,
        ``sde_type``, the window).

        Args:
            height, width: the image size in pixels (``None``: the policy's resolution), positive
                multiples of what the family needs; the schedule's shift follows the size where
                the scheduler shifts dynamically.
            initial_noise_generators: one generator per row that draws the row's initial noise
                ``x_T`` (otherwise drawn with ``generator``, which draws the steps' noise either
                way).
            grad_steps: the final steps whose graph is kept (each transformer call
                checkpointed), and the images decoded with gradients, in ``[0, num_steps]``.

        Raises:
            ValueError: naming ``grad_steps``, ``height``, ``width`` or
                ``initial_noise_generators``, before any model work.
        """
        check_grad_steps(grad_steps, num_steps)
        size = self._call_size(height, width)
        latents = draw_initial_noise(
            initial_noise_generators,
            self._latent_shape(len(conditioning), size),
            device=self.device,
            dtype=self._noise_dtype(conditioning),
        )
        sample = self._sample(
            conditioning,
            num_steps=num_steps,
            guidance_scale=guidance_scale,
            noise_level=self.noise_level,
            generator=generator,
            size=size,
            latents=latents,
            grad_steps=grad_steps,
        )
        out, window = sample.output, sample.window
        if window is None:  # noise_level 0: the ODE everywhere, no transition recorded
            window = range(0)
            latents, log_probs = out.latents[:, :1], out.log_probs[:, :0]
        else:
            latents, log_probs = out.latents, out.log_probs
        steps = torch.arange(window.start, window.stop, dtype=torch.int64, device=self.device)
        rows = flow_schedule_rows(
            sample.schedule, window, guidance_scale=guidance_scale, device=self.device
        )
        return PolicyRollout(out.images, latents, log_probs, steps, rows, sample.final_latents)

    def score(
        self,
        conditioning: Conditioning,
        latents: Latents,
        next_latents: Latents,
        schedule: Float[Tensor, "batch values"],
        *,
        cfg: bool = True,
        denoiser: nn.Module | None = None,
    ) -> FlowStepScore:
        """Log-probs of stored SDE transitions from their ``schedule`` rows alone (the
        transformer's timestep, sigma, the next sigma, ``sigma_max`` and the guidance scale),
        through ``denoiser`` (default the transformer; the reference under
        :meth:`reference_policy`), with the policy's ``noise_level`` and ``sde_type``. With
        ``cfg``, rows sampled with guidance above 1 are scored with true classifier-free
        guidance where the family has it (FLUX.1's guidance is an input of its one pass, whatever
        ``cfg``). ``std_dev`` is ``std_t sqrt(sigma - sigma_prev)``, the step's standard
        deviation.

        Raises:
            TypeError, ValueError: naming ``schedule`` if it is not ``(batch, 5)`` rows.
        """
        rows = flow_rows(schedule, latents)
        transformer = self._scoring_denoiser(denoiser)
        guided = scores_guided(cfg, rows.guidance_scale)
        velocity = self._velocity(
            transformer, conditioning, latents, rows.timesteps, rows.guidance_scale, guided
        )
        return score_flow_rows(
            velocity, latents, next_latents, rows,
            noise_level=self.noise_level, sde_type=self.sde_type,
        )  # fmt: skip

    @torch.no_grad()
    def deterministic_images(
        self,
        prompts: Sequence[str],
        *,
        negative_prompt: str = "",
        num_steps: int,
        guidance_scale: float,
        generators: Sequence[torch.Generator],
    ) -> ImagesOrVideos:
        """Images in ``[0, 1]`` of ``prompts`` by the flow ODE everywhere (``noise_level=0``,
        the stock pipeline's sampler; `ddpo.policy.PolicyOptions`), image ``i``'s initial noise
        drawn by ``generators[i]``, at the policy's resolution (a video family's videos
        ``(batch, frames, 3, H, W)``)."""
        check_one_generator_per_prompt(prompts, generators)
        out = self(
            list(prompts),
            negative_prompt=negative_prompt,
            num_inference_steps=num_steps,
            guidance_scale=guidance_scale,
            noise_level=0,
            generator=list(generators),
            output_type="pt",
        )
        images: Tensor = out.images
        return images.float().clamp(0, 1)

    def __call__(
        self,
        prompt: str | list[str],
        *,
        negative_prompt: str = "",
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        noise_level: float | int | None = None,
        generator: Generators = None,
        latents: Latents | None = None,
        height: int | None = None,
        width: int | None = None,
        output_type: str = "pil",
    ) -> DDPOPipelineOutput:
        """Sample images of ``prompt`` (defaults: the family's step count and guidance).
        ``noise_level=0``: the ODE everywhere, the same images as the stock pipeline for the
        same generator (every latent is returned, no log-probs); ``None``: the policy's SDE
        window and noise level. ``height`` and ``width``: the image size (``None``: the
        policy's resolution), as the stock pipeline's."""
        steps = self.default_steps if num_inference_steps is None else num_inference_steps
        if isinstance(steps, bool) or not isinstance(steps, int):
            raise ValueError(f"num_inference_steps must be an int, got {steps!r}")
        if steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {steps!r}")
        level = self.noise_level
        if noise_level is not None:
            level = check_noise_level(noise_level, allow_zero=True, sde_type=self.sde_type)
        size = self._call_size(height, width)
        conditioning = self.encode(check_prompts(prompt), negative_prompt)
        return self._sample(
            conditioning,
            num_steps=steps,
            guidance_scale=self.default_guidance if guidance_scale is None else guidance_scale,
            noise_level=level,
            generator=generator,
            size=size,
            latents=latents,
            output_type=output_type,
        ).output

    # ---- the denoiser as a model (ddpo.adapters.flow.denoiser), for other objectives -----

    @property
    def prediction_type(self) -> Literal["flow"]:
        """The transformer predicts the flow velocity ``eps - x_0``: ``"flow"``."""
        return "flow"

    @property
    def num_train_timesteps(self) -> int:
        """The scheduler config's ``num_train_timesteps`` (timesteps are ``sigma`` times it)."""
        return flow_num_train_timesteps(self.scheduler)

    def predict(
        self,
        conditioning: Conditioning,
        latents: Latents,
        timesteps: Real[Tensor, " batch"],
        *,
        guidance_scale: float = 1.0,
        denoiser: nn.Module | None = None,
    ) -> Latents:
        """The transformer's velocity at noisy ``latents`` and ``timesteps`` (``sigma *
        num_train_timesteps``, in ``[0, num_train_timesteps]``), with gradients.

        Computed as sampling and scoring compute it (the family's ``_velocity``): through
        ``denoiser`` (default the transformer; the reference under :meth:`reference_policy`),
        with the family's guidance at ``guidance_scale`` (true classifier-free guidance above 1
        where the family has it; FLUX.1-dev's guidance embedding of the scale).

        Raises:
            ValueError: on shapes that disagree, timesteps outside the range or a guidance scale
                that is not a finite number; before the transformer runs.
        """
        check_predict_args(conditioning, latents, timesteps, ndim=len(self._latent_shape(1)))
        scale = check_guidance_scale(guidance_scale)
        t = flow_model_timesteps(self.scheduler, timesteps)
        transformer = self._scoring_denoiser(denoiser)
        return self._velocity(transformer, conditioning, latents, t, scale, scale > 1.0)

    def add_noise(
        self, clean: Latents, noise: Latents, timesteps: Real[Tensor, " batch"]
    ) -> Latents:
        """The forward process ``(1 - sigma) x_0 + sigma eps`` at ``sigma = timesteps /
        num_train_timesteps``."""
        return flow_add_noise_at(self.scheduler, clean, noise, timesteps)

    def training_target(
        self, clean: Latents, noise: Latents, timesteps: Real[Tensor, " batch"]
    ) -> Latents:
        """What :meth:`predict` should output at ``add_noise(clean, noise, timesteps)``: the
        velocity ``noise - clean``, the same at every timestep."""
        return flow_training_target(self.scheduler, clean, noise, timesteps)

    def predicted_clean(
        self, latents: Latents, prediction: Latents, timesteps: Real[Tensor, " batch"]
    ) -> Latents:
        """The clean latents that the velocity ``prediction`` at noisy ``latents`` and
        ``timesteps`` implies: ``x_sigma - sigma v``; affine in ``prediction``."""
        return flow_predicted_clean(self.scheduler, latents, prediction, timesteps)

    def decode(self, latents: Latents) -> Float[Tensor, "batch 3 image_height image_width"]:
        """Images in ``[0, 1]``, float32, of final (unpacked) latents, differentiable: the VAE
        as sampling decodes (``latents / scaling_factor + shift_factor``)."""
        return flow_decode_images(self.vae, latents, self._sd.image_processor)

    def encode_images(self, images: Float[Tensor, "batch 3 image_height image_width"]) -> Latents:
        """The final (unpacked) latents that :meth:`decode` turns into ``images`` (float
        ``(batch, 3, H, W)`` in ``[0, 1]``, sides multiples of the family's size multiple): the
        VAE's posterior mean ``z``, ``(z - shift_factor) * scaling_factor``
        (:func:`ddpo.adapters.flow.denoiser.flow_vae_encode`); float32, on the VAE's device.
        What Diffusion-DPO trains on (`ddpo.data.preferences`)."""
        multiple, why = self._size_multiple()
        check_images(images, multiple=multiple, why=why)
        return flow_vae_encode(self.vae, images)

    @abc.abstractmethod
    def encode(self, prompts: Any, negative_prompt: str) -> Conditioning:
        """The family's prompt encoding (see `ddpo.policy.DiffusionPolicy.encode`)."""
