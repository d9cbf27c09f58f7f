"""The DDIM update with the log-density of the step, the policy of DDPO."""

from typing import Literal, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from ddpo._typing import Latents, PerSample
from ddpo.core._broadcast import float_dtype, per_sample
from ddpo.core._checks import values_checkable
from ddpo.core._gaussian import gaussian_step

PredictionType = Literal["epsilon", "v_prediction", "sample"]
_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class DDIMStepOutput(NamedTuple):
    """Result of :func:`ddim_step_with_logprob`.

    Attributes:
        prev_sample: ``x_{t-1}``, ``(batch, channels, height, width)``, in ``sample``'s dtype.
        log_prob: log-density of ``prev_sample`` under the step's Gaussian, ``(batch,)``, float32+.
        mean: the Gaussian's mean ``mu_theta(x_t, t)``, same shape as ``sample``, float32+.
        std_dev: the Gaussian's standard deviation ``sigma_t``, ``(batch,)``, float32+.
        pred_original_sample: the model's estimate of ``x_0``, float32+.
    """

    prev_sample: Latents
    log_prob: PerSample
    mean: Latents
    std_dev: PerSample
    pred_original_sample: Latents


def _check_eta(eta: float | PerSample) -> None:
    """ValueError unless ``0 < eta <= 1`` (a tensor's values only where reading them is free)."""
    if isinstance(eta, Tensor):
        if values_checkable(eta) and eta.numel() > 0:
            bad = ~((eta > 0) & (eta <= 1))
            if bool(bad.any()):
                raise ValueError(f"eta must be in (0, 1], got eta={eta[bad].tolist()}")
        return
    if not eta > 0:
        raise ValueError(f"eta must be > 0 for the step to have a log-density, got eta={eta!r}")
    if not eta <= 1:
        raise ValueError(
            "eta must be <= 1: above it sigma_t^2 exceeds 1 - alpha_bar_prev and the DDIM mean "
            f"coefficient sqrt(1 - alpha_bar_prev - sigma_t^2) does not exist, got eta={eta!r}"
        )


def _eta_factors(eta: float | PerSample, like: Tensor) -> tuple[float | Tensor, float | Tensor]:
    """``eta`` and ``eta^2`` as factors of ``like``'s dtype: a number as it is; a per-sample
    tensor rounded as PyTorch rounds a number (``eta^2`` squared in float64 first)."""
    if not isinstance(eta, Tensor):
        return eta, eta**2
    wide = eta.to(device=like.device, dtype=torch.promote_types(like.dtype, torch.float64))
    return (
        per_sample(eta.to(device=like.device, dtype=like.dtype), like),
        per_sample((wide**2).to(like.dtype), like),
    )


def ddim_step_with_logprob(
    model_output: Latents,
    sample: Latents,
    alpha_bar_t: PerSample,
    alpha_bar_prev: PerSample,
    *,
    eta: float | PerSample,
    prediction_type: PredictionType = "epsilon",
    noise: Latents | None = None,
    prev_sample: Latents | None = None,
    log_prob_reduction: Literal["mean", "sum"] = "mean",
    clip_sample_range: float | None = None,
) -> DDIMStepOutput:
    """One stochastic DDIM step ``x_t -> x_{t-1}`` and the log-density of ``x_{t-1}``.

    DDPO (Black et al., 2023, arXiv 2305.13301, Sec. 4.2 and Eq. 4) treats each denoising step as
    an isotropic Gaussian policy ``pi(x_{t-1} | x_t) = N(mu_theta(x_t, t), sigma_t^2 I)`` with the
    DDIM mean and variance (Song et al., 2021, Eq. 12 and 16)::

        x0_hat   = (x_t - sqrt(1 - a_t) eps_hat) / sqrt(a_t)
        sigma_t  = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        mu       = sqrt(a_prev) x0_hat + c_t eps_hat,   c_t = sqrt(1 - a_prev - sigma_t^2)
        log_prob = reduce(-z^2 / 2 - log sigma_t - log sqrt(2 pi)),   z = (x_{t-1} - mu) / sigma_t

    where ``a`` is ``alpha_bar`` (diffusers' ``alphas_cumprod``). The arithmetic follows diffusers'
    ``DDIMScheduler.step`` so that, given the same noise, ``prev_sample`` agrees with it to float
    rounding, with one change: ``c_t^2`` is evaluated as ``(1 - a_prev) - eta^2 v_t``, where
    ``v_t = sigma_t^2 / eta^2`` is not the square of a square root, and clamped at 0. It equals
    ``(1 - a_prev) ((1 - eta^2) + eta^2 a_t (1 - a_prev) / (a_prev (1 - a_t))) >= 0`` for
    ``0 < eta <= 1``, and at ``a_t = 0`` with ``eta = 1`` (the first step of a zero-terminal-SNR
    schedule; Lin et al., 2024, arXiv 2305.08891) it is exactly 0, where diffusers' ``1 - a_prev
    - sigma_t^2`` rounds to about ``-6e-8`` (NaN) or ``+6e-8`` (``c_t = 2.4e-4``).

    Exactly one of ``noise`` (sampling: ``x_{t-1} = mu + sigma_t * noise``) or ``prev_sample``
    (scoring a stored transition) must be given. The log-density is always taken at a detached
    ``x_{t-1}``, so its gradient flows to ``model_output`` through ``mu`` only. A sampled
    ``x_{t-1}`` is first rounded to ``sample``'s dtype, so that re-scoring the returned
    ``prev_sample`` (e.g. in bfloat16) reproduces ``log_prob``.

    Non-finite corners, left as the math has them (nothing here changes the inputs):

    * ``sigma_t = 0``: the step is deterministic and has no density; ``log_prob`` is defined as
      0 there (a probability ratio of 1 with no gradient: the step drops out of the losses). This
      happens where ``alpha_bar_prev == 1`` (the last step with ``set_alpha_to_one=True``) and
      where ``alpha_bar_prev == alpha_bar_t`` (diffusers' last step from ``t = 0`` with
      ``set_alpha_to_one=False``, reached by ``"linspace"`` and by ``"trailing"`` spacing with
      667 or more steps; unclipped, that step maps ``x_t`` to itself). Stable Diffusion's
      ``"leading"`` schedule with ``steps_offset=1`` never reaches it.
    * Tiny ``sigma_t`` (tiny ``eta``): the density is taken through ``z``, so it stays finite
      while ``sigma_t`` itself is representable (``sigma_t^2`` underflows below ``sigma_t = 4e-23``
      in float32). It is ``-inf`` only where ``z^2`` overflows, i.e. a stored ``x_{t-1}`` lies
      ``2e19 sigma_t`` from the mean, e.g. after rounding to bfloat16 with ``sigma_t < 1e-22``.
    * ``alpha_bar_t = 0`` with ``prediction_type="epsilon"``: ``x0_hat`` divides by 0 and is
      infinite, since pure noise carries no information about ``x_0``. ``"v_prediction"`` and
      ``"sample"`` are finite there. The adapters floor a zero ``alpha_bar`` at ``2**-24`` for
      epsilon prediction, as diffusers' Euler scheduler does (see
      :func:`ddpo.adapters.ddim_alpha_bars`).

    Args:
        model_output: network output ``(batch, channels, height, width)``: epsilon, v or x0.
        sample: ``x_t``, same shape.
        alpha_bar_t: ``alpha_bar`` at each sample's current timestep, ``(batch,)``.
        alpha_bar_prev: ``alpha_bar`` at each sample's previous timestep, ``(batch,)``.
        eta: DDIM stochasticity in ``(0, 1]``: > 0 for the log-density to exist, <= 1 for
            ``sigma_t^2 <= 1 - a_prev`` (Song et al.; ``eta = 1`` is DDPM's variance). One
            number, or one per sample ``(batch,)`` (float64 for the same bits as the number:
            ``eta^2`` is taken in float64 before rounding, as Python squares a float); a
            tensor's range is checked where its values are free to read
            (:func:`ddpo.core._checks.values_checkable`).
        prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``, as in diffusers.
        noise: standard normal noise for sampling mode, same shape as ``sample``.
        prev_sample: the stored ``x_{t-1}`` for scoring mode, same shape as ``sample``.
        log_prob_reduction: ``"mean"`` over channels, height and width (the reference; its clip
            range of 1e-4 assumes it) or ``"sum"`` (the exact log-density).
        clip_sample_range: if set, clamp ``x0_hat`` to ``[-r, r]`` (diffusers' ``clip_sample``).

    Returns:
        :class:`DDIMStepOutput` with ``prev_sample``, ``log_prob``, ``mean``, ``std_dev`` and
        ``pred_original_sample``.

    Raises:
        ValueError: on ``eta`` outside ``(0, 1]``, an unknown ``prediction_type`` or
            ``log_prob_reduction``, or unless exactly one of ``noise`` and ``prev_sample`` is
            given.
    """
    _check_eta(eta)
    if prediction_type not in _PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type must be one of {_PREDICTION_TYPES}, got {prediction_type!r}"
        )
    if log_prob_reduction not in ("mean", "sum"):
        raise ValueError(f"log_prob_reduction must be 'mean' or 'sum', got {log_prob_reduction!r}")
    if (noise is None) == (prev_sample is None):
        raise ValueError(
            "give exactly one of noise (sampling) and prev_sample (scoring); got "
            f"noise={'a tensor' if noise is not None else None}, "
            f"prev_sample={'a tensor' if prev_sample is not None else None}"
        )
    if clip_sample_range is not None and not clip_sample_range > 0:
        raise ValueError(f"clip_sample_range must be > 0 or None, got {clip_sample_range!r}")

    dtype = float_dtype(model_output, sample, alpha_bar_t, alpha_bar_prev)
    x_t = sample.to(dtype)
    out = model_output.to(dtype)
    a_t = per_sample(alpha_bar_t.to(dtype), x_t)
    a_prev = per_sample(alpha_bar_prev.to(dtype), x_t)
    beta_t = 1 - a_t

    # 1. The model's estimates of x_0 and of the noise (diffusers' DDIM, "formula (12)").
    if prediction_type == "epsilon":
        pred_original_sample = (x_t - beta_t.sqrt() * out) / a_t.sqrt()
        pred_epsilon = out
    elif prediction_type == "sample":
        pred_original_sample = out
        pred_epsilon = (x_t - a_t.sqrt() * pred_original_sample) / beta_t.sqrt()
    else:  # v_prediction
        pred_original_sample = a_t.sqrt() * x_t - beta_t.sqrt() * out
        pred_epsilon = a_t.sqrt() * out + beta_t.sqrt() * x_t

    # 2. Optional clipping of x_0 (the noise estimate is kept, as diffusers does by default).
    if clip_sample_range is not None:
        pred_original_sample = pred_original_sample.clamp(-clip_sample_range, clip_sample_range)

    # 3. sigma_t = eta * sqrt(variance), "formula (16)".
    variance = (1 - a_prev) / beta_t * (1 - a_t / a_prev)
    eta_t, eta_squared = _eta_factors(eta, x_t)
    std_dev_t = eta_t * variance.sqrt()

    # 4. The mean mu = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps. diffusers squares
    #    sigma = eta * sqrt(variance); at zero terminal SNR (a_t = 0) with eta = 1 the variance is
    #    exactly 1 - a_prev, but the squared square root differs from it by an ulp, so the
    #    radicand rounds to -6e-8 (NaN) or +6e-8 (a coefficient of 2.4e-4 that should be 0).
    #    Using eta^2 * variance instead makes it exactly 0 there and changes nothing else beyond
    #    an ulp of sigma^2. For 0 < eta <= 1 the radicand is >= 0 (it equals (1 - a_prev) *
    #    ((1 - eta^2) + eta^2 a_t (1 - a_prev) / (a_prev (1 - a_t)))); the clamp only removes
    #    rounding below 0 near a_t = 0 and never moves a value by more than that rounding.
    direction_coeff = ((1 - a_prev) - eta_squared * variance).clamp(min=0).sqrt()
    direction = direction_coeff * pred_epsilon
    mean = a_prev.sqrt() * pred_original_sample + direction

    # 5. Sample, or take the stored transition, and its Gaussian log-density at the detached
    #    x_{t-1} (through z = (x - mu) / sigma). A step with sigma_t = 0 is deterministic
    #    (x_{t-1} = mu) and has no density: its log_prob is defined as 0, a probability ratio of 1
    #    without gradient, so that the step drops out of the policy-gradient losses.
    x_prev_out, log_prob = gaussian_step(
        mean,
        std_dev_t,
        noise=noise,
        prev_sample=prev_sample,
        out_dtype=sample.dtype,
        reduction=log_prob_reduction,
    )

    std_per_sample: Float[Tensor, " batch"] = std_dev_t.reshape(std_dev_t.shape[0])
    return DDIMStepOutput(
        prev_sample=x_prev_out,
        log_prob=log_prob,
        mean=mean,
        std_dev=std_per_sample,
        pred_original_sample=pred_original_sample,
    )
