"""Flow-GRPO's stochastic steps of a rectified-flow model with their log-probabilities: the SDE
step (``sde_type="sde"``) and the coefficients-preserving step (``sde_type="cps"``)."""

import math
from typing import Literal, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from ddpo._typing import Latents, PerSample, no_type_check
from ddpo.core._broadcast import float_dtype, per_sample
from ddpo.core._checks import values_checkable
from ddpo.core._gaussian import draw_step, gaussian_step


class FlowSDEStepOutput(NamedTuple):
    """Result of :func:`flow_sde_step_with_logprob`.

    Attributes:
        prev_sample: ``x`` at ``sigma_prev``, ``(batch, channels, height, width)``, in
            ``sample``'s dtype.
        log_prob: log-density of ``prev_sample`` under the step's Gaussian, ``(batch,)``,
            float32+.
        mean: the Gaussian's mean, same shape as ``sample``, float32+.
        std_dev: ``std_t``, the SDE's diffusion coefficient before the ``sqrt(-dt)`` factor,
            ``(batch,)``, float32+ (Flow-GRPO's ``std_dev_t``).
    """

    prev_sample: Latents
    log_prob: PerSample
    mean: Latents
    std_dev: PerSample


def _describe(values: Tensor, bad: Tensor) -> str:
    """The offending entries of a per-sample vector, for an error message."""
    return str(values.detach()[bad].tolist())


def _check_step(
    model_output: Tensor,
    sample: Tensor,
    sigma: Tensor,
    sigma_prev: Tensor,
    noise: Tensor | None,
    prev_sample: Tensor | None,
    log_prob_reduction: str,
) -> None:
    """The checks both flow steps share: the reduction, exactly one of ``noise`` and
    ``prev_sample``, the shapes, and ``0 <= sigma_prev < sigma <= 1`` (on CPU, outside tracing).

    Raises:
        ValueError: naming the argument and the offending value or shape.
    """
    if log_prob_reduction not in ("mean", "sum"):
        raise ValueError(f"log_prob_reduction must be 'mean' or 'sum', got {log_prob_reduction!r}")
    if (noise is None) == (prev_sample is None):
        raise ValueError(
            "give exactly one of noise (sampling) and prev_sample (scoring); got "
            f"noise={'a tensor' if noise is not None else None}, "
            f"prev_sample={'a tensor' if prev_sample is not None else None}"
        )
    for name, latents in (
        ("model_output", model_output),
        ("noise", noise),
        ("prev_sample", prev_sample),
    ):
        if latents is not None and latents.shape != sample.shape:
            raise ValueError(
                f"{name} must have sample's shape {tuple(sample.shape)}, got {tuple(latents.shape)}"
            )
    for name, values in (("sigma", sigma), ("sigma_prev", sigma_prev)):
        if values.shape != sample.shape[:1]:
            raise ValueError(
                f"{name} must have shape (batch,) = {tuple(sample.shape[:1])}, "
                f"got {tuple(values.shape)}"
            )
    if values_checkable(sigma, sigma_prev):  # (skipped on accelerators: no sync per step)
        bad = ~((sigma > 0) & (sigma <= 1))
        if bool(bad.any()):
            raise ValueError(f"sigma must be in (0, 1], got sigma={_describe(sigma, bad)}")
        bad = ~((sigma_prev >= 0) & (sigma_prev < sigma))
        if bool(bad.any()):
            raise ValueError(
                f"sigma_prev must be in [0, sigma), got sigma_prev={_describe(sigma_prev, bad)} "
                f"for sigma={_describe(sigma, bad)}"
            )


def flow_sde_step_with_logprob(
    model_output: Latents,
    sample: Latents,
    sigma: PerSample,
    sigma_prev: PerSample,
    *,
    noise_level: float,
    sigma_max: float | PerSample,
    noise: Latents | None = None,
    prev_sample: Latents | None = None,
    log_prob_reduction: Literal["mean", "sum"] = "mean",
) -> FlowSDEStepOutput:
    """One Euler-Maruyama step of Flow-GRPO's SDE ``x_sigma -> x_sigma_prev`` and its log-density.

    Flow-GRPO (Liu et al., 2025, arXiv 2505.05470, Sec. 4.2, "ODE-to-SDE conversion") turns the
    deterministic flow-matching ODE ``dx = v dt`` (``x_sigma = (1 - sigma) x_0 + sigma eps``,
    ``v`` the predicted velocity) into the reverse-time SDE with the same marginals, and
    discretises it with Euler-Maruyama, so that each step is an isotropic Gaussian policy::

        dt       = sigma_prev - sigma  (< 0)
        std_t    = noise_level * sqrt(sigma / (1 - sigma')),  sigma' = sigma_max if sigma == 1
                                                                        else sigma
        mu       = x (1 + std_t^2 dt / (2 sigma)) + v (1 + std_t^2 (1 - sigma) / (2 sigma)) dt
        x_prev   = mu + std_t sqrt(-dt) noise
        log_prob = reduce(-z^2 / 2 - log(std_t sqrt(-dt)) - log sqrt(2 pi)),
                   z = (x_prev - mu) / (std_t sqrt(-dt))

    The arithmetic follows Flow-GRPO's ``sde_step_with_logprob``
    (``flow_grpo/diffusers_patch/sd3_sde_with_logprob.py``), whose ``sigma_max`` is the
    scheduler's largest sigma below 1 (``scheduler.sigmas[1]``): at ``sigma == 1`` the exact
    ``std_t`` is infinite, and the reference substitutes ``sigma_max`` in the denominator only.
    As ``noise_level -> 0`` the mean tends to the Euler ODE step ``x + v dt``.

    How it differs from :func:`ddpo.core.ddim_step_with_logprob`: DDIM's stochasticity ``eta``
    interpolates between the deterministic DDIM step (0) and DDPM's ancestral step (1) of a
    noise-prediction model, and the step's variance comes from the noise schedule's ``alpha_bar``
    table; a flow-matching model predicts a velocity and is sampled by a deterministic ODE, so
    the randomness here is *added*: the drift gains a score correction (the ``std_t^2`` terms)
    that keeps the marginals of the ODE, and the noise level ``a`` is a free choice (Flow-GRPO
    uses 0.7); ``std_t`` diverges as ``sigma -> 1``. See ``docs/flow_models.md``.

    Exactly one of ``noise`` (sampling) or ``prev_sample`` (scoring a stored transition) must be
    given. The log-density is always taken at a detached ``x_prev``, so its gradient flows to
    ``model_output`` through ``mu`` only. The math runs in float32 (float64 for float64 inputs)
    whatever the input dtype: ``std_t^2 / sigma`` near ``sigma = 1`` is large and loses all
    precision in bfloat16. A sampled ``x_prev`` is rounded to ``sample``'s dtype before its
    density is taken, so that re-scoring the returned ``prev_sample`` reproduces ``log_prob``.
    If the step's standard deviation underflows to 0 (``noise_level`` below about ``1e-40``)
    the step is deterministic and its ``log_prob`` is defined as 0, as in
    :func:`ddpo.core.ddim_step_with_logprob`.

    Args:
        model_output: the predicted velocity ``v``, ``(batch, channels, height, width)``.
        sample: ``x`` at ``sigma``, same shape.
        sigma: each sample's current sigma in ``(0, 1]``, ``(batch,)``.
        sigma_prev: each sample's next sigma in ``[0, sigma)``, ``(batch,)``.
        noise_level: Flow-GRPO's ``a`` in ``std_t = a sqrt(sigma / (1 - sigma))``, > 0
            (the paper uses 0.7).
        sigma_max: the scheduler's largest sigma below 1, in ``(0, 1)``, used for ``sigma'``
            where ``sigma == 1``: one number, or one per sample ``(batch,)`` (a tensor's range
            is checked where its values are free to read,
            :func:`ddpo.core._checks.values_checkable`).
        noise: standard normal noise for sampling mode, same shape as ``sample``.
        prev_sample: the stored ``x_prev`` for scoring mode, same shape as ``sample``.
        log_prob_reduction: ``"mean"`` over channels, height and width (the reference) or
            ``"sum"`` (the exact log-density).

    Returns:
        :class:`FlowSDEStepOutput` with ``prev_sample`` ``(batch, channels, height, width)`` in
        ``sample``'s dtype, ``log_prob`` ``(batch,)``, ``mean`` (same shape as ``sample``) and
        ``std_dev`` ``(batch,)``, the last three in float32 or wider.

    Raises:
        ValueError: on ``noise_level <= 0``, ``sigma_max`` outside ``(0, 1)``, a ``sigma``
            outside ``(0, 1]``, a ``sigma_prev`` outside ``[0, sigma)``, shapes that disagree
            with ``sample``'s, an unknown ``log_prob_reduction``, or unless exactly one of
            ``noise`` and ``prev_sample`` is given.
    """
    # 0. Arguments.
    if not noise_level > 0:
        raise ValueError(
            f"noise_level must be > 0 for the step to have a log-density, got {noise_level!r}"
        )
    if isinstance(sigma_max, Tensor):
        if values_checkable(sigma_max) and sigma_max.numel() > 0:
            outside = ~((sigma_max > 0) & (sigma_max < 1))
            if bool(outside.any()):
                raise ValueError(f"sigma_max must be in (0, 1), got sigma_max={sigma_max.tolist()}")
    elif not 0 < sigma_max < 1:
        raise ValueError(f"sigma_max must be in (0, 1), got sigma_max={sigma_max!r}")
    _check_step(model_output, sample, sigma, sigma_prev, noise, prev_sample, log_prob_reduction)

    dtype = float_dtype(model_output, sample, sigma, sigma_prev)
    x = sample.to(dtype)
    v = model_output.to(dtype)
    sigma_t = per_sample(sigma.to(dtype), x)
    dt = per_sample(sigma_prev.to(dtype), x) - sigma_t

    # 1. The diffusion coefficient std_t = a sqrt(sigma / (1 - sigma')), sigma' = sigma_max at 1.
    if isinstance(sigma_max, Tensor):
        sigma_prime = per_sample(sigma_max.to(device=x.device, dtype=dtype), x)
    else:
        sigma_prime = torch.full_like(sigma_t, sigma_max)
    sigma_denominator = torch.where(sigma_t == 1, sigma_prime, sigma_t)
    std_dev_t = torch.sqrt(sigma_t / (1 - sigma_denominator)) * noise_level

    # 2. The Euler-Maruyama mean of the reverse-time SDE.
    mean = (
        x * (1 + std_dev_t**2 / (2 * sigma_t) * dt)
        + v * (1 + std_dev_t**2 * (1 - sigma_t) / (2 * sigma_t)) * dt
    )

    # 3. The step's standard deviation std_t sqrt(-dt).
    step_std = std_dev_t * torch.sqrt(-dt)

    # 4. Sample, or take the stored transition, and its Gaussian log-density (a sample is
    #    rounded to the caller's dtype first; a step whose std underflows to 0 has log_prob 0).
    x_prev_out, log_prob = gaussian_step(
        mean,
        step_std,
        noise=noise,
        prev_sample=prev_sample,
        out_dtype=sample.dtype,
        reduction=log_prob_reduction,
    )

    std_per_sample: Float[Tensor, " batch"] = std_dev_t.reshape(std_dev_t.shape[0])
    return FlowSDEStepOutput(
        prev_sample=x_prev_out, log_prob=log_prob, mean=mean, std_dev=std_per_sample
    )


class FlowCPSStepOutput(NamedTuple):
    """Result of :func:`flow_cps_step_with_logprob`.

    Attributes:
        prev_sample: ``x`` at ``sigma_prev``, ``(batch, channels, height, width)``, in
            ``sample``'s dtype.
        log_prob: the step's log-probability in the chosen ``log_prob_form``, ``(batch,)``,
            float32+.
        mean: the Gaussian's mean, same shape as ``sample``, float32+.
        std_dev: the step's standard deviation ``sigma_prev sin(noise_level pi / 2)``,
            ``(batch,)``, float32+ (Flow-GRPO's ``std_dev_t`` for ``sde_type="cps"``: unlike the
            SDE step's, it has no ``sqrt(-dt)`` factor).
    """

    prev_sample: Latents
    log_prob: PerSample
    mean: Latents
    std_dev: PerSample


CPSLogProbForm = Literal["flow_grpo", "gaussian"]
"""How :func:`flow_cps_step_with_logprob` reports the log-probability: Flow-GRPO's
``-(x_prev - mu)^2`` with every parameter-independent factor dropped, or the exact Gaussian
log-density."""


def flow_cps_step_with_logprob(
    model_output: Latents,
    sample: Latents,
    sigma: PerSample,
    sigma_prev: PerSample,
    *,
    noise_level: float,
    noise: Latents | None = None,
    prev_sample: Latents | None = None,
    log_prob_form: CPSLogProbForm = "flow_grpo",
    log_prob_reduction: Literal["mean", "sum"] = "mean",
) -> FlowCPSStepOutput:
    """One coefficients-preserving sampling (CPS) step ``x_sigma -> x_sigma_prev`` of a
    rectified-flow model, with its log-probability (Flow-GRPO's ``sde_type="cps"``).

    The model's velocity ``v`` gives the predicted clean sample and the predicted noise of
    ``x_sigma = (1 - sigma) x_0 + sigma eps``; the step re-noises the predicted clean sample to
    ``sigma_prev``, splitting the noise coefficient ``sigma_prev`` into the predicted noise's
    share and fresh noise ``std``, so that the coefficients of ``x_0`` and of the (predicted and
    fresh) noise stay those of the flow's marginal at ``sigma_prev`` (Wang and Yu, 2025,
    "Coefficients-Preserving Sampling for Reinforcement Learning with Flow Matching",
    arXiv 2509.05952)::

        std      = sigma_prev sin(noise_level pi / 2)
        x0_hat   = x - sigma v
        eps_hat  = x + (1 - sigma) v
        mu       = (1 - sigma_prev) x0_hat + sqrt(sigma_prev^2 - std^2) eps_hat
        x_prev   = mu + std noise

    ``log_prob_form`` picks the log-probability:

    - ``"flow_grpo"`` (the reference): ``reduce(-(x_prev - mu)^2)``. Flow-GRPO drops every
      factor that does not depend on the model: the Gaussian's ``1 / (2 std^2)``, ``-log std``
      and ``-log sqrt(2 pi)``. Differences of it (the PPO ratio) are the exact log-ratio times
      ``2 std^2``, so its ratios are flatter than the Gaussian's where ``std^2 < 1/2``.
    - ``"gaussian"``: the log-density of ``N(mu, std^2 I)``, as
      :func:`flow_sde_step_with_logprob` reports for the SDE step.

    The arithmetic follows Flow-GRPO's ``sde_step_with_logprob(..., sde_type="cps")``
    (``flow_grpo/diffusers_patch/sd3_sde_with_logprob.py``): float32 (float64 for float64
    inputs), ``std`` from ``sigma_prev`` times the sine taken in double precision. At
    ``noise_level -> 0`` the step is Euler's ODE step ``x + (sigma_prev - sigma) v``; at 1 it
    re-noises ``x0_hat`` with fresh noise only. Unlike the SDE step it is finite at
    ``sigma == 1`` (no ``sigma_max``), and it is deterministic at ``sigma_prev == 0`` (the last
    step: ``std = 0``, where the ``"gaussian"`` form defines the log-probability as 0, as
    :func:`flow_sde_step_with_logprob` does for a vanishing step, and the ``"flow_grpo"`` form
    is ``-reduce((x_prev - mu)^2)`` as written). A sampled ``x_prev`` is rounded to ``sample``'s
    dtype before its log-probability is taken, and the log-probability is taken at a detached
    ``x_prev``, so its gradient reaches ``model_output`` through ``mu`` only.

    Args:
        model_output: the predicted velocity ``v``, ``(batch, channels, height, width)``.
        sample: ``x`` at ``sigma``, same shape.
        sigma: each sample's current sigma in ``(0, 1]``, ``(batch,)``.
        sigma_prev: each sample's next sigma in ``[0, sigma)``, ``(batch,)``.
        noise_level: Flow-GRPO's ``noise_level`` in ``(0, 1]``: the fresh noise's share of
            ``sigma_prev`` is ``sin(noise_level pi / 2)`` (Flow-GRPO's CPS configs use 0.8).
        noise: standard normal noise for sampling mode, same shape as ``sample``.
        prev_sample: the stored ``x_prev`` for scoring mode, same shape as ``sample``.
        log_prob_form: ``"flow_grpo"`` (the reference) or ``"gaussian"``.
        log_prob_reduction: ``"mean"`` over channels, height and width (the reference) or
            ``"sum"``.

    Returns:
        :class:`FlowCPSStepOutput` with ``prev_sample`` in ``sample``'s dtype, ``log_prob``
        ``(batch,)``, ``mean`` (same shape as ``sample``) and ``std_dev`` ``(batch,)``, the last
        three in float32 or wider.

    Raises:
        ValueError: on ``noise_level`` outside ``(0, 1]``, an unknown ``log_prob_form`` or
            ``log_prob_reduction``, a ``sigma`` outside ``(0, 1]``, a ``sigma_prev`` outside
            ``[0, sigma)``, shapes that disagree with ``sample``'s, or unless exactly one of
            ``noise`` and ``prev_sample`` is given.
    """
    # 0. Arguments.
    if not 0 < noise_level <= 1:
        raise ValueError(
            "noise_level must be in (0, 1] for the CPS step (the fresh noise's share of "
            f"sigma_prev is sin(noise_level pi / 2)), got noise_level={noise_level!r}"
        )
    if log_prob_form not in ("flow_grpo", "gaussian"):
        raise ValueError(
            f"log_prob_form must be 'flow_grpo' or 'gaussian', got log_prob_form={log_prob_form!r}"
        )
    _check_step(model_output, sample, sigma, sigma_prev, noise, prev_sample, log_prob_reduction)

    dtype = float_dtype(model_output, sample, sigma, sigma_prev)
    x = sample.to(dtype)
    v = model_output.to(dtype)
    sigma_t = per_sample(sigma.to(dtype), x)
    sigma_next = per_sample(sigma_prev.to(dtype), x)

    # 1. The fresh noise's standard deviation, a share sin(a pi / 2) of sigma_prev.
    std_dev_t = sigma_next * math.sin(noise_level * math.pi / 2)

    # 2. The predicted clean sample and noise, re-mixed at sigma_prev.
    pred_original_sample = x - sigma_t * v
    noise_estimate = x + v * (1 - sigma_t)
    mean = pred_original_sample * (1 - sigma_next) + noise_estimate * torch.sqrt(
        sigma_next**2 - std_dev_t**2
    )

    # 3. Sample (rounded to the caller's dtype) or take the stored transition, and its
    #    log-probability: the Gaussian's, or Flow-GRPO's with the constants dropped.
    if log_prob_form == "gaussian":
        x_prev_out, log_prob = gaussian_step(
            mean,
            std_dev_t,
            noise=noise,
            prev_sample=prev_sample,
            out_dtype=sample.dtype,
            reduction=log_prob_reduction,
        )
    else:
        x_prev_out, x_prev = draw_step(
            mean, std_dev_t, noise=noise, prev_sample=prev_sample, out_dtype=sample.dtype
        )
        residual = -((x_prev.detach() - mean) ** 2)
        dims = tuple(range(1, residual.ndim))
        log_prob = residual.mean(dim=dims) if log_prob_reduction == "mean" else residual.sum(dims)

    std_per_sample: Float[Tensor, " batch"] = std_dev_t.reshape(std_dev_t.shape[0])
    return FlowCPSStepOutput(
        prev_sample=x_prev_out, log_prob=log_prob, mean=mean, std_dev=std_per_sample
    )


class FlowSolverStep(NamedTuple):
    """Result of :func:`flow_dpm_solver_step`.

    Attributes:
        prev_sample: ``x`` at ``sigma_next``, in ``sample``'s dtype.
        clean: the clean estimate ``x - sigma v`` at this step, float32+: the next step's
            ``previous_clean``.
    """

    prev_sample: Latents
    clean: Latents


@no_type_check  # it checks ``solver_type`` itself, naming the value
def flow_dpm_solver_step(
    model_output: Latents,
    sample: Latents,
    sigma: PerSample,
    sigma_next: PerSample,
    *,
    previous_clean: Latents | None = None,
    sigma_previous: PerSample | None = None,
    solver_type: Literal["midpoint", "heun"] = "midpoint",
) -> FlowSolverStep:
    """One deterministic step of the multistep DPM-Solver++ (Lu et al., 2022, arXiv 2211.01095)
    for a rectified-flow model, ``x_sigma -> x_sigma_next``, second order where the previous
    step's clean estimate is given.

    In a flow, ``x_sigma = alpha x_0 + sigma eps`` with ``alpha = 1 - sigma``; the model's
    velocity ``v`` gives the clean estimate ``D = x - sigma v``, and with ``lambda = log(alpha /
    sigma)``, ``h = lambda_next - lambda``::

        first order:  x_next = (sigma_next / sigma) x - alpha_next (e^-h - 1) D
        second order: r = (lambda - lambda_previous) / h,  D1 = (D - D_previous) / r
                      midpoint: x_next = first order - alpha_next (e^-h - 1) D1 / 2
                      heun:     x_next = first order + alpha_next ((e^-h - 1) / h + 1) D1

    The first-order step is Euler's ODE step ``x + (sigma_next - sigma) v`` written another way;
    the second order reuses the previous step's estimate, so it costs no extra model call.
    MixGRPO-Flash (Li et al., 2025, arXiv 2507.21802) samples the deterministic steps after its
    stochastic window this way. The arithmetic is diffusers' ``DPMSolverMultistepScheduler``'s
    (``algorithm_type="dpmsolver++"``, ``solver_order=2``, ``prediction_type="flow_prediction"``,
    ``use_flow_sigmas=True``), which also takes the first order at a final ``sigma_next = 0``
    (its ``lower_order_final``), as here.

    Args:
        model_output: the velocity ``v`` at ``sample``, ``(batch, ...)``.
        sample: ``x_sigma``, ``(batch, ...)``.
        sigma, sigma_next: ``(batch,)``, ``0 <= sigma_next < sigma < 1`` (the solver needs
            ``alpha > 0``: not the first step from pure noise).
        previous_clean: the previous step's clean estimate (``FlowSolverStep.clean``); ``None``:
            the first order.
        sigma_previous: its sigma, ``(batch,)``, given with ``previous_clean``.
        solver_type: ``"midpoint"`` (diffusers' default, MixGRPO-Flash's scripts) or ``"heun"``.

    Returns:
        :class:`FlowSolverStep`.

    Raises:
        ValueError: for an unknown ``solver_type``, ``previous_clean`` without
            ``sigma_previous`` (or the reverse), or sigmas outside their range (on CPU).
    """
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    if (previous_clean is None) != (sigma_previous is None):
        raise ValueError("give previous_clean and sigma_previous together (or neither)")
    if values_checkable(sigma, sigma_next):
        bad = ~((sigma_next >= 0) & (sigma_next < sigma) & (sigma < 1))
        if bool(bad.any()):
            raise ValueError(
                "flow_dpm_solver_step needs 0 <= sigma_next < sigma < 1, got sigma="
                f"{_describe(sigma, bad)} and sigma_next={_describe(sigma_next, bad)}"
            )
    dtype = float_dtype(model_output, sample)
    x = sample.to(dtype)
    s, s_next = per_sample(sigma.to(dtype), x), per_sample(sigma_next.to(dtype), x)
    clean = x - s * model_output.to(dtype)
    alpha_next = 1 - s_next
    lam, lam_next = torch.log(1 - s) - torch.log(s), torch.log(alpha_next) - torch.log(s_next)
    h = lam_next - lam
    decay = torch.exp(-h) - 1.0
    prev = (s_next / s) * x - (alpha_next * decay) * clean
    if previous_clean is None or sigma_previous is None:
        return FlowSolverStep(prev.to(sample.dtype), clean)
    # The second order, except at a final sigma_next = 0 (h infinite): masked, not branched on,
    # so that nothing is read on the host and no infinity reaches a gradient.
    second = s_next > 0
    h = torch.where(second, h, torch.ones_like(h))
    s_previous = per_sample(sigma_previous.to(dtype), x)
    lam_previous = torch.log(1 - s_previous) - torch.log(s_previous)
    d1 = (clean - previous_clean.to(dtype)) * (h / (lam - lam_previous))
    if solver_type == "midpoint":
        coefficient = -0.5 * alpha_next * decay
    else:
        coefficient = alpha_next * (decay / h + 1.0)
    prev = prev + torch.where(second, coefficient, torch.zeros_like(coefficient)) * d1
    return FlowSolverStep(prev.to(sample.dtype), clean)
