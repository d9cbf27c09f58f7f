"""Forward noising of clean latents and the denoiser's training targets: the variance-preserving
process of DDPM/DDIM models (Stable Diffusion 1.x/2.x, SDXL) and the rectified flow of SD3 and
FLUX, with the inverse maps from a noisy point and a prediction back to the clean latent."""

from typing import get_args

import torch
from jaxtyping import Float, Integer
from torch import Tensor

from ddpo._typing import Latents, PerSample
from ddpo.core._broadcast import float_dtype, per_sample
from ddpo.core._checks import values_checkable
from ddpo.core.ddim import PredictionType

_PREDICTION_TYPES: tuple[str, ...] = get_args(PredictionType)


def _check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in _PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type must be one of {_PREDICTION_TYPES}, got {prediction_type!r}"
        )


def _check_shapes(
    like_name: str, like: Tensor, latents: dict[str, Tensor], per_sample_values: dict[str, Tensor]
) -> None:
    """Each of ``latents`` has ``like``'s shape; each of ``per_sample_values`` is ``(batch,)``.

    Raises:
        ValueError: naming the argument and the two shapes.
    """
    for name, tensor in latents.items():
        if tensor.shape != like.shape:
            raise ValueError(
                f"{name} must have {like_name}'s shape {tuple(like.shape)}, "
                f"got {tuple(tensor.shape)}"
            )
    for name, values in per_sample_values.items():
        if values.shape != like.shape[:1]:
            raise ValueError(
                f"{name} must have shape (batch,) = {tuple(like.shape[:1])}, "
                f"got {tuple(values.shape)}"
            )


def _check_unit_interval(name: str, values: Tensor, *, low_open: bool = False) -> None:
    """``values`` lie in ``[0, 1]`` (``(0, 1]`` with ``low_open``); NaN is outside.

    Read on the host only where that is free (CPU, not under ``torch.compile``): see
    :func:`ddpo.core._checks.values_checkable`.

    Raises:
        ValueError: naming the argument and its offending entries.
    """
    if not values_checkable(values):
        return
    low_ok = values > 0 if low_open else values >= 0
    bad = ~(low_ok & (values <= 1))
    if bool(bad.any()):
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise ValueError(
            f"{name} must be in {interval}, got {name}={values.detach()[bad].tolist()}"
        )


# --- the schedule lookup -------------------------------------------------------------------


def alpha_bar_at(
    alphas_cumprod: Float[Tensor, " train_timesteps"], timesteps: Integer[Tensor, " batch"]
) -> PerSample:
    """``alpha_bar`` at each sample's integer timestep: ``alpha_bar_t = alphas_cumprod[t]``.

    The table is the scheduler's ``alphas_cumprod``, ``alpha_bar_t = prod_{s <= t} (1 - beta_s)``
    (Ho et al., 2020, arXiv 2006.11239, Sec. 2, before Eq. 4), indexed as diffusers'
    ``DDPMScheduler.add_noise`` indexes it. A plain gather: an ``alpha_bar`` of 0 (the last entry
    of a zero-terminal-SNR table) is returned as 0; flooring it for epsilon prediction is the
    adapters' choice (:func:`ddpo.adapters.ddim_alpha_bars`). Negative indices are refused, not
    wrapped around.

    Args:
        alphas_cumprod: the table, ``(num_train_timesteps,)``, on ``timesteps``' device.
        timesteps: one integer timestep per sample in ``[0, num_train_timesteps)``, ``(batch,)``,
            of any integer dtype (unsigned ones too: they are read as indices, not as a mask).

    Returns:
        ``alpha_bar_t``, ``(batch,)``, in ``alphas_cumprod``'s dtype.

    Raises:
        ValueError: if ``alphas_cumprod`` is not one-dimensional or a timestep lies outside
            ``[0, num_train_timesteps)`` (checked on CPU outside ``torch.compile``).
        TypeError: if ``timesteps`` is not an integer tensor.
    """
    if alphas_cumprod.ndim != 1:
        raise ValueError(
            f"alphas_cumprod must be one-dimensional, got shape {tuple(alphas_cumprod.shape)}"
        )
    if (
        timesteps.dtype.is_floating_point
        or timesteps.dtype.is_complex
        or timesteps.dtype == (torch.bool)
    ):
        raise TypeError(f"timesteps must be an integer tensor, got dtype {timesteps.dtype}")
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must have shape (batch,), got {tuple(timesteps.shape)}")
    num_train = alphas_cumprod.shape[0]
    # int64 before comparing: a uint8 tensor compared with 1000 compares with 1000 mod 256.
    t = timesteps.long()
    if values_checkable(t) and t.numel() > 0:
        bad = (t < 0) | (t >= num_train)
        if bool(bad.any()):
            raise ValueError(
                f"timesteps must lie in [0, {num_train}), got timesteps={t[bad].tolist()}"
            )
    return alphas_cumprod[t]


# --- variance preserving (DDPM, DDIM) --------------------------------------------------------


def vp_add_noise(x0: Latents, noise: Latents, alpha_bar_t: PerSample) -> Latents:
    """Noise clean latents to ``alpha_bar_t``: ``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps``.

    The forward process of DDPM, ``q(x_t | x_0) = N(sqrt(a_t) x_0, (1 - a_t) I)`` (Ho et al.,
    2020, arXiv 2006.11239, Eq. 4), reparameterised with ``eps ~ N(0, I)``; ``a`` is
    ``alpha_bar`` (diffusers' ``alphas_cumprod``). The arithmetic is diffusers'
    ``DDPMScheduler.add_noise`` / ``DDIMScheduler.add_noise``. ``a_t = 0`` (zero terminal SNR;
    Lin et al., 2024, arXiv 2305.08891) gives ``x_t = eps``, ``a_t = 1`` gives ``x_0``.

    Args:
        x0: clean latents ``x_0``, ``(batch, channels, height, width)``.
        noise: ``eps``, same shape.
        alpha_bar_t: each sample's ``alpha_bar`` in ``[0, 1]``, ``(batch,)``.

    Returns:
        ``x_t``, same shape as ``x0`` and in ``x0``'s dtype (computed in float32, or float64
        for float64 inputs).

    Raises:
        ValueError: on a shape that disagrees with ``x0``'s or an ``alpha_bar_t`` outside
            ``[0, 1]``.
    """
    _check_shapes("x0", x0, {"noise": noise}, {"alpha_bar_t": alpha_bar_t})
    _check_unit_interval("alpha_bar_t", alpha_bar_t)
    dtype = float_dtype(x0, noise, alpha_bar_t)
    a_t = per_sample(alpha_bar_t.to(dtype), x0)

    # 1. The coefficients of Eq. 4's mean and standard deviation.
    sqrt_alpha_prod = a_t.sqrt()
    sqrt_one_minus_alpha_prod = (1 - a_t).sqrt()

    # 2. x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps.
    x_t = sqrt_alpha_prod * x0.to(dtype) + sqrt_one_minus_alpha_prod * noise.to(dtype)
    return x_t.to(x0.dtype)


def vp_velocity(x0: Latents, noise: Latents, alpha_bar_t: PerSample) -> Latents:
    """The velocity of a clean latent and its noise: ``v = sqrt(a_t) eps - sqrt(1 - a_t) x_0``.

    Salimans & Ho (2022, arXiv 2202.00512, Sec. 4 and App. D) define ``v = alpha_t eps -
    sigma_t x`` with ``alpha_t = sqrt(a_t)``, ``sigma_t = sqrt(1 - a_t)``: the target of a
    ``"v_prediction"`` model (Stable Diffusion 2.x at 768 px). The arithmetic is diffusers'
    ``DDPMScheduler.get_velocity``.

    Args:
        x0: clean latents ``x_0``, ``(batch, channels, height, width)``.
        noise: ``eps``, same shape.
        alpha_bar_t: each sample's ``alpha_bar`` in ``[0, 1]``, ``(batch,)``.

    Returns:
        ``v``, same shape as ``x0`` and in ``x0``'s dtype (computed in float32 or wider).

    Raises:
        ValueError: on a shape that disagrees with ``x0``'s or an ``alpha_bar_t`` outside
            ``[0, 1]``.
    """
    _check_shapes("x0", x0, {"noise": noise}, {"alpha_bar_t": alpha_bar_t})
    _check_unit_interval("alpha_bar_t", alpha_bar_t)
    dtype = float_dtype(x0, noise, alpha_bar_t)
    a_t = per_sample(alpha_bar_t.to(dtype), x0)

    # 1. alpha_t = sqrt(a_t), sigma_t = sqrt(1 - a_t).
    sqrt_alpha_prod = a_t.sqrt()
    sqrt_one_minus_alpha_prod = (1 - a_t).sqrt()

    # 2. v = alpha_t eps - sigma_t x_0.
    velocity = sqrt_alpha_prod * noise.to(dtype) - sqrt_one_minus_alpha_prod * x0.to(dtype)
    return velocity.to(x0.dtype)


def vp_training_target(
    x0: Latents, noise: Latents, alpha_bar_t: PerSample, *, prediction_type: PredictionType
) -> Latents:
    """The denoiser's regression target at ``x_t = vp_add_noise(x0, noise, alpha_bar_t)``.

    ``eps`` for ``"epsilon"`` (Ho et al., 2020, arXiv 2006.11239, Eq. 14), ``v = sqrt(a_t) eps
    - sqrt(1 - a_t) x_0`` for ``"v_prediction"`` (Salimans & Ho, 2022, arXiv 2202.00512, Sec. 4;
    :func:`vp_velocity`), ``x_0`` for ``"sample"``: the targets of diffusers' training examples
    for a scheduler's ``config.prediction_type``. :func:`vp_predicted_x0` inverts each at ``x_t``.

    Args:
        x0: clean latents ``x_0``, ``(batch, channels, height, width)``.
        noise: ``eps``, same shape.
        alpha_bar_t: each sample's ``alpha_bar`` in ``[0, 1]``, ``(batch,)`` (checked, used by
            ``"v_prediction"`` only).
        prediction_type: the model's parameterisation, ``"epsilon"``, ``"v_prediction"`` or
            ``"sample"`` (no default: a model's target is never guessed).

    Returns:
        The target, same shape as ``x0`` and in ``x0``'s dtype.

    Raises:
        ValueError: on an unknown ``prediction_type``, a shape that disagrees with ``x0``'s or
            an ``alpha_bar_t`` outside ``[0, 1]``.
    """
    _check_prediction_type(prediction_type)
    _check_shapes("x0", x0, {"noise": noise}, {"alpha_bar_t": alpha_bar_t})
    _check_unit_interval("alpha_bar_t", alpha_bar_t)
    if prediction_type == "epsilon":
        return noise.to(x0.dtype)
    if prediction_type == "sample":
        return x0
    return vp_velocity(x0, noise, alpha_bar_t)


def vp_predicted_x0(
    x_t: Latents, model_output: Latents, alpha_bar_t: PerSample, *, prediction_type: PredictionType
) -> Latents:
    """The clean latent a prediction at ``x_t`` implies, the inverse of :func:`vp_training_target`.

    With ``a = a_t`` (Song et al., 2021, arXiv 2010.02502, Eq. 9 for epsilon; Salimans & Ho,
    2022, arXiv 2202.00512, Sec. 4 for v)::

        "epsilon":       x0_hat = (x_t - sqrt(1 - a) eps_hat) / sqrt(a)
        "v_prediction":  x0_hat = sqrt(a) x_t - sqrt(1 - a) v_hat
        "sample":        x0_hat = model_output

    the ``pred_original_sample`` of diffusers' ``DDIMScheduler.step`` and of
    :func:`ddpo.core.ddim_step_with_logprob`, with the same arithmetic. Epsilon prediction needs
    ``a > 0``: at ``a = 0`` pure noise carries nothing of ``x_0`` and the division is by 0.

    Args:
        x_t: the noisy latents, ``(batch, channels, height, width)``.
        model_output: the denoiser's prediction at ``x_t``, same shape: epsilon, v or x0.
        alpha_bar_t: each sample's ``alpha_bar``, ``(batch,)``, in ``[0, 1]`` (``(0, 1]`` for
            ``"epsilon"``).
        prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.

    Returns:
        ``x0_hat``, same shape as ``x_t`` and in ``x_t``'s dtype (computed in float32 or wider).

    Raises:
        ValueError: on an unknown ``prediction_type``, a shape that disagrees with ``x_t``'s or
            an ``alpha_bar_t`` outside ``[0, 1]`` (or equal to 0 for ``"epsilon"``).
    """
    _check_prediction_type(prediction_type)
    _check_shapes("x_t", x_t, {"model_output": model_output}, {"alpha_bar_t": alpha_bar_t})
    _check_unit_interval("alpha_bar_t", alpha_bar_t, low_open=prediction_type == "epsilon")
    if prediction_type == "sample":
        return model_output.to(x_t.dtype)
    dtype = float_dtype(x_t, model_output, alpha_bar_t)
    sample = x_t.to(dtype)
    out = model_output.to(dtype)
    a_t = per_sample(alpha_bar_t.to(dtype), sample)
    beta_t = 1 - a_t

    # 1. Invert x_t = sqrt(a) x_0 + sqrt(1 - a) eps for x_0 (as diffusers' DDIM step, "formula
    #    (12)" there).
    if prediction_type == "epsilon":
        pred_original_sample = (sample - beta_t.sqrt() * out) / a_t.sqrt()
    else:  # v_prediction
        pred_original_sample = a_t.sqrt() * sample - beta_t.sqrt() * out
    return pred_original_sample.to(x_t.dtype)


# --- rectified flow (SD3, FLUX) ----------------------------------------------------------------


def flow_add_noise(x0: Latents, noise: Latents, sigma: PerSample) -> Latents:
    """Noise clean latents to ``sigma`` on the straight path: ``x = (1 - sigma) x_0 + sigma eps``.

    The rectified-flow forward process of SD3 and FLUX (Esser et al., 2024, arXiv 2403.03206,
    Sec. 2 and 3.1; Liu et al., 2023, arXiv 2209.03003, Eq. 1, with data at ``sigma = 0``), the
    arithmetic of diffusers' ``FlowMatchEulerDiscreteScheduler.scale_noise``. ``sigma`` is the
    scheduler's ``sigmas`` entry of the timestep (after its shift), not ``t / 1000``.

    Args:
        x0: clean latents ``x_0``, ``(batch, channels, height, width)``.
        noise: ``eps``, same shape.
        sigma: each sample's ``sigma`` in ``[0, 1]``, ``(batch,)``.

    Returns:
        ``x_sigma``, same shape as ``x0`` and in ``x0``'s dtype (computed in float32 or wider).

    Raises:
        ValueError: on a shape that disagrees with ``x0``'s or a ``sigma`` outside ``[0, 1]``.
    """
    _check_shapes("x0", x0, {"noise": noise}, {"sigma": sigma})
    _check_unit_interval("sigma", sigma)
    dtype = float_dtype(x0, noise, sigma)
    sigma_t = per_sample(sigma.to(dtype), x0)

    # 1. x_sigma = sigma eps + (1 - sigma) x_0, in diffusers' order.
    x_sigma = sigma_t * noise.to(dtype) + (1.0 - sigma_t) * x0.to(dtype)
    return x_sigma.to(x0.dtype)


def flow_velocity_target(x0: Latents, noise: Latents) -> Latents:
    """The flow-matching target of a clean latent and its noise: ``v = eps - x_0``.

    The velocity ``d x_sigma / d sigma`` of ``x_sigma = (1 - sigma) x_0 + sigma eps``, the
    regression target of rectified flow (Liu et al., 2023, arXiv 2209.03003, Eq. 1; conditional
    flow matching with the optimal-transport path and ``sigma_min = 0``, Lipman et al., 2023,
    arXiv 2210.02747, Sec. 4.1; Esser et al., 2024, arXiv 2403.03206, Sec. 3.1), as SD3 and FLUX
    are trained. The same at every ``sigma``.

    Args:
        x0: clean latents ``x_0``, ``(batch, channels, height, width)``.
        noise: ``eps``, same shape.

    Returns:
        ``v``, same shape as ``x0`` and in ``x0``'s dtype (computed in float32 or wider).

    Raises:
        ValueError: if ``noise``'s shape differs from ``x0``'s.
    """
    _check_shapes("x0", x0, {"noise": noise}, {})
    dtype = float_dtype(x0, noise)
    return (noise.to(dtype) - x0.to(dtype)).to(x0.dtype)


def flow_predicted_x0(x_t: Latents, velocity: Latents, sigma: PerSample) -> Latents:
    """The clean latent a velocity at ``x_sigma`` implies: ``x0_hat = x_sigma - sigma v``.

    The inverse of :func:`flow_add_noise` with :func:`flow_velocity_target`, the
    ``pred_original_sample`` of :func:`ddpo.core.flow_cps_step_with_logprob` and of the Euler
    step ``x_0 = x_sigma + (0 - sigma) v`` (Esser et al., 2024, arXiv 2403.03206, Sec. 2).

    Args:
        x_t: ``x_sigma``, ``(batch, channels, height, width)``.
        velocity: the predicted velocity ``v`` at ``x_sigma``, same shape.
        sigma: each sample's ``sigma`` in ``[0, 1]``, ``(batch,)``.

    Returns:
        ``x0_hat``, same shape as ``x_t`` and in ``x_t``'s dtype (computed in float32 or wider).

    Raises:
        ValueError: on a shape that disagrees with ``x_t``'s or a ``sigma`` outside ``[0, 1]``.
    """
    _check_shapes("x_t", x_t, {"velocity": velocity}, {"sigma": sigma})
    _check_unit_interval("sigma", sigma)
    dtype = float_dtype(x_t, velocity, sigma)
    sigma_t = per_sample(sigma.to(dtype), x_t)

    # 1. x0_hat = x_sigma - sigma v.
    pred_original_sample = x_t.to(dtype) - sigma_t * velocity.to(dtype)
    return pred_original_sample.to(x_t.dtype)


__all__ = [
    "alpha_bar_at",
    "flow_add_noise",
    "flow_predicted_x0",
    "flow_velocity_target",
    "vp_add_noise",
    "vp_predicted_x0",
    "vp_training_target",
    "vp_velocity",
]
