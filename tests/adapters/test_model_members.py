"""The boundary's model members of every family (``prediction_type``, ``num_train_timesteps``,
``predict``, ``add_noise``, ``training_target``, ``decode``, the optional ``encode_images`` and
``predicted_clean``), against stock diffusers on the same inputs: the scheduler's ``add_noise`` /
``get_velocity`` / ``scale_noise``, the denoiser called with the stock pipeline's
``encode_prompt`` and guidance formula, the stock VAE decode and image (Wan: video)
post-processing, and the VAE's posterior mean.

One suite over the six tiny families (SD, SDXL, SD3, FLUX.1-dev, Qwen-Image, Wan2.1
text-to-video), each policy with fresh LoRA adapters (the session's, read only); the stock
reference calls the policy's own denoiser module, so what is compared is the conditioning, the
timesteps, the guidance and the plumbing. Latents have the shape of the policy's initial latents
(Wan's with a frame axis, ``(batch, C, frames, h, w)``), images that of its samples (Wan's
videos, ``(batch, frames, 3, H, W)``).
"""

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import beartype
import jaxtyping
import pytest
import torch
from diffusers import AutoencoderKL, FluxPipeline, QwenImagePipeline
from torch import Tensor, nn

from ddpo.adapters import DDPOStableDiffusionPipeline
from ddpo.adapters.common.denoiser import (
    check_noising_args,
    check_predict_args,
    check_timesteps_shape,
)
from ddpo.adapters.ddim.denoiser import vae_decode, vae_encode
from ddpo.adapters.sd.tiny import sd_v1_ddim_scheduler
from ddpo.policy import Conditioning, DiffusionPolicy, missing_members

pytestmark = pytest.mark.slow

PROMPTS = ["a red circle", "a blue square"]
FAMILIES = ("sd", "sdxl", "sd3", "flux", "qwenimage", "wan")
DDIM_FAMILIES = ("sd", "sdxl")
FLOW_FAMILIES = ("sd3", "flux", "qwenimage", "wan")
FRAMES = {"wan": (5,)}
"""The frame axis of a family's samples (the tiny Wan's 5 frames); ``()`` for images."""
TYPE_ERRORS = (jaxtyping.TypeCheckError, beartype.roar.BeartypeException)


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def policy(family: str, request: pytest.FixtureRequest) -> Any:
    name = {"sd": "lora_pipeline"}.get(family, f"{family}_policy")
    return request.getfixturevalue(name)


# ---- stock diffusers references ---------------------------------------------------------------


def cfg(out: Tensor, scale: float) -> Tensor:
    """The stock pipelines' guidance formula on a (negative, positive) doubled batch."""
    uncond, cond = out.chunk(2)
    return uncond + scale * (cond - uncond)


def stock_sd(policy: Any, x: Tensor, t: Tensor, scale: float) -> Tensor:
    embeds, negative = policy.pipeline.encode_prompt(PROMPTS, "cpu", 1, True, negative_prompt=None)
    unet = policy.denoiser
    if scale <= 1:
        return unet(x, t, encoder_hidden_states=embeds).sample
    out = unet(
        torch.cat([x, x]), torch.cat([t, t]), encoder_hidden_states=torch.cat([negative, embeds])
    )
    return cfg(out.sample, scale)


def stock_sdxl(policy: Any, x: Tensor, t: Tensor, scale: float) -> Tensor:
    pipe = policy.pipeline
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
        PROMPTS, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True
    )
    size = tuple(policy.resolution)
    ids = pipe._get_add_time_ids(
        size, (0, 0), size, dtype=embeds.dtype,
        text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim,
    ).repeat(len(PROMPTS), 1)  # fmt: skip
    unet = policy.denoiser
    if scale <= 1:
        added = {"text_embeds": pooled, "time_ids": ids}
        return unet(x, t, encoder_hidden_states=embeds, added_cond_kwargs=added).sample
    added = {"text_embeds": torch.cat([negative_pooled, pooled]), "time_ids": torch.cat([ids, ids])}
    out = unet(
        torch.cat([x, x]), torch.cat([t, t]),
        encoder_hidden_states=torch.cat([negative, embeds]), added_cond_kwargs=added,
    )  # fmt: skip
    return cfg(out.sample, scale)


def stock_sd3(policy: Any, x: Tensor, t: Tensor, scale: float) -> Tensor:
    embeds, negative, pooled, negative_pooled = policy.pipeline.encode_prompt(
        PROMPTS, None, None, device="cpu", num_images_per_prompt=1,
        do_classifier_free_guidance=True, max_sequence_length=policy.max_sequence_length,
    )  # fmt: skip
    transformer = policy.denoiser
    if scale <= 1:
        return transformer(
            hidden_states=x, timestep=t, encoder_hidden_states=embeds, pooled_projections=pooled
        ).sample
    out = transformer(
        hidden_states=torch.cat([x, x]), timestep=torch.cat([t, t]),
        encoder_hidden_states=torch.cat([negative, embeds]),
        pooled_projections=torch.cat([negative_pooled, pooled]),
    )  # fmt: skip
    return cfg(out.sample, scale)


def stock_flux(policy: Any, x: Tensor, t: Tensor, scale: float) -> Tensor:
    pipe = policy.pipeline
    embeds, pooled, text_ids = pipe.encode_prompt(
        PROMPTS, None, device="cpu", max_sequence_length=policy.max_sequence_length
    )
    batch, channels, height, width = x.shape
    factor = pipe.vae_scale_factor
    assert policy.denoiser.config.guidance_embeds  # the tiny FLUX.1-dev: guidance embedded
    out = policy.denoiser(
        hidden_states=FluxPipeline._pack_latents(x, batch, channels, height, width),
        timestep=t / 1000,
        guidance=torch.full([1], scale, dtype=torch.float32).expand(batch),
        pooled_projections=pooled,
        encoder_hidden_states=embeds,
        txt_ids=text_ids,
        img_ids=FluxPipeline._prepare_latent_image_ids(
            batch, height // 2, width // 2, "cpu", embeds.dtype
        ),
    ).sample
    return FluxPipeline._unpack_latents(out, height * factor, width * factor, factor)


def stock_qwenimage(policy: Any, x: Tensor, t: Tensor, scale: float) -> Tensor:
    """The stock pipeline's two passes (prompt, then the negative prompt ``""``) and its true
    CFG with the norm-preserving rescale, on packed latents."""
    pipe = policy.pipeline
    batch, channels, height, width = x.shape
    packed = QwenImagePipeline._pack_latents(x, batch, channels, height, width)

    def velocity(prompts: list[str]) -> Tensor:
        embeds, mask = pipe.encode_prompt(prompts, device="cpu")
        out: Tensor = policy.denoiser(
            hidden_states=packed, timestep=t / 1000, encoder_hidden_states=embeds,
            encoder_hidden_states_mask=mask, img_shapes=[[(1, height // 2, width // 2)]] * batch,
        ).sample  # fmt: skip
        return out

    pred = velocity(PROMPTS)
    if scale > 1:
        negative = velocity([""] * batch)
        combined = negative + scale * (pred - negative)
        pred = combined * (
            torch.norm(pred, dim=-1, keepdim=True) / torch.norm(combined, dim=-1, keepdim=True)
        )
    factor = pipe.vae_scale_factor
    unpacked = QwenImagePipeline._unpack_latents(pred, height * factor, width * factor, factor)
    return unpacked[:, :, 0]  # the VAE's one frame


def stock_wan(policy: Any, x: Tensor, t: Tensor, scale: float) -> Tensor:
    """``WanPipeline``'s two passes (prompt, then the negative prompt ``""``) on video latents,
    combined by classifier-free guidance above 1."""
    embeds, negative = policy.pipeline.encode_prompt(
        PROMPTS, device="cpu", max_sequence_length=policy.max_sequence_length
    )
    transformer = policy.denoiser
    cond: Tensor = transformer(hidden_states=x, timestep=t, encoder_hidden_states=embeds).sample
    if scale <= 1:
        return cond
    uncond = transformer(hidden_states=x, timestep=t, encoder_hidden_states=negative).sample
    return uncond + scale * (cond - uncond)


STOCK_PREDICT: dict[str, Callable[[Any, Tensor, Tensor, float], Tensor]] = {
    "sd": stock_sd, "sdxl": stock_sdxl, "sd3": stock_sd3, "flux": stock_flux,
    "qwenimage": stock_qwenimage, "wan": stock_wan,
}  # fmt: skip


def stock_decode(policy: Any, latents: Tensor) -> Tensor:
    """The stock pipelines' decode: DDIM families ``latents / scaling_factor``, flow families
    ``+ shift_factor``; the VAE; ``image_processor.postprocess(output_type="pt")``."""
    pipe = policy.pipeline
    config = pipe.vae.config
    assert getattr(config, "latents_mean", None) is None  # the tiny VAEs have no mean/std
    scaled = latents / config.scaling_factor + (getattr(config, "shift_factor", None) or 0.0)
    decoded = pipe.vae.decode(scaled, return_dict=False)[0]
    images: Tensor = pipe.image_processor.postprocess(decoded, output_type="pt")
    return images


def video_vae_statistics(vae: Any) -> tuple[Tensor, Tensor]:
    """A video VAE's (Qwen-Image's, Wan's) ``latents_mean`` and ``latents_std``, ``(1, z_dim,
    1, 1, 1)``."""
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean, std = (torch.tensor(v).view(shape) for v in (vae.config.latents_mean,
                                                       vae.config.latents_std))  # fmt: skip
    return mean, std


def stock_decode_qwenimage(policy: Any, latents: Tensor) -> Tensor:
    """``QwenImagePipeline``'s decode: one frame of ``latents / (1 / latents_std) +
    latents_mean``, the video VAE, its first frame, ``postprocess(output_type="pt")``."""
    pipe = policy.pipeline
    mean, std = video_vae_statistics(pipe.vae)
    decoded = pipe.vae.decode(latents[:, :, None] / (1.0 / std) + mean, return_dict=False)[0]
    images: Tensor = pipe.image_processor.postprocess(decoded[:, :, 0], output_type="pt")
    return images


def stock_decode_wan(policy: Any, latents: Tensor) -> Tensor:
    """``WanPipeline``'s decode: ``latents / (1 / latents_std) + latents_mean``, the video VAE,
    ``video_processor.postprocess_video(output_type="pt")``."""
    pipe = policy.pipeline
    mean, std = video_vae_statistics(pipe.vae)
    decoded = pipe.vae.decode(latents / (1.0 / std) + mean, return_dict=False)[0]
    videos: Tensor = pipe.video_processor.postprocess_video(decoded, output_type="pt")
    return videos


STOCK_DECODE: dict[str, Callable[[Any, Tensor], Tensor]] = {
    "qwenimage": stock_decode_qwenimage, "wan": stock_decode_wan,
}  # fmt: skip
"""The families whose decode is not :func:`stock_decode`'s."""


def latent_shape(policy: Any, batch: int) -> tuple[int, ...]:
    """The policy's (unpacked) initial latents for ``batch`` samples at its resolution."""
    return tuple(policy._latent_shape(batch, getattr(policy, "resolution", None)))


def random_timesteps(policy: Any, family: str, gen: torch.Generator) -> Tensor:
    """Two timesteps in the family's units, as floats (DDIM: whole numbers)."""
    num_train = policy.num_train_timesteps
    if family in DDIM_FAMILIES:
        return torch.randint(0, num_train, (2,), generator=gen).to(torch.float32)
    return torch.rand(2, generator=gen) * num_train


class Wrapped(nn.Module):
    """A stand-in for DDP's wrapper: the model under ``.module``, forwarded."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)


_ENCODED: weakref.WeakKeyDictionary[Any, Conditioning] = weakref.WeakKeyDictionary()


def encoded(policy: Any) -> Conditioning:
    """``policy.encode(PROMPTS, "")``, once per policy (its text encoders are frozen)."""
    if policy not in _ENCODED:
        _ENCODED[policy] = policy.encode(PROMPTS, "")
    return _ENCODED[policy]


@dataclass
class Inputs:
    clean: Tensor
    noise: Tensor
    timesteps: Tensor


def inputs(policy: Any, family: str, seed: int = 0) -> Inputs:
    gen = torch.Generator().manual_seed(seed)
    shape = latent_shape(policy, len(PROMPTS))
    return Inputs(
        torch.randn(shape, generator=gen),
        torch.randn(shape, generator=gen),
        random_timesteps(policy, family, gen),
    )


# ---- the members ----------------------------------------------------------------------------


def test_the_policies_have_every_member(policy: Any, family: str) -> None:
    assert missing_members(policy) == []
    assert isinstance(policy, DiffusionPolicy)
    assert policy.num_train_timesteps == policy.scheduler.config.num_train_timesteps == 1000
    expected = "flow" if family in FLOW_FAMILIES else "epsilon"
    assert policy.prediction_type == expected


def test_sd_prediction_type_follows_the_scheduler(
    lora_pipeline: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert lora_pipeline.prediction_type == "epsilon"
    v_scheduler = sd_v1_ddim_scheduler(prediction_type="v_prediction")
    monkeypatch.setattr(lora_pipeline.pipeline, "scheduler", v_scheduler)
    assert lora_pipeline.prediction_type == "v_prediction"
    sample = type(v_scheduler).from_config(v_scheduler.config, prediction_type="sample")
    monkeypatch.setattr(lora_pipeline.pipeline, "scheduler", sample)
    with pytest.raises(ValueError, match="prediction_type='sample'"):
        lora_pipeline.prediction_type  # noqa: B018


def test_add_noise_equals_the_schedulers(policy: Any, family: str) -> None:
    x = inputs(policy, family)
    if family in DDIM_FAMILIES:
        expected = policy.scheduler.add_noise(x.clean, x.noise, x.timesteps.long())
    else:  # scale_noise looks the sigma up by timestep in its (fresh, 1000-entry) table
        scheduler = type(policy.scheduler).from_config(policy.scheduler.config)
        gen = torch.Generator().manual_seed(1)
        t = scheduler.timesteps[torch.randint(0, len(scheduler.timesteps), (2,), generator=gen)]
        x = Inputs(x.clean, x.noise, t)
        expected = scheduler.scale_noise(x.clean, x.timesteps, x.noise)
    noisy = policy.add_noise(x.clean, x.noise, x.timesteps)
    torch.testing.assert_close(noisy, expected, atol=1e-6, rtol=1e-6)
    assert not torch.equal(noisy, x.clean) and not torch.equal(noisy, x.noise)


def test_training_target_is_what_the_model_regresses_to(policy: Any, family: str) -> None:
    x = inputs(policy, family)
    target = policy.training_target(x.clean, x.noise, x.timesteps)
    expected = x.noise - x.clean if family in FLOW_FAMILIES else x.noise
    assert torch.equal(target, expected)


def test_predicted_clean_inverts_the_forward_process(policy: Any, family: str) -> None:
    """The clean latents that the training target implies at ``add_noise(clean, noise, t)`` are
    ``clean`` (DDIM: ``(x_t - sqrt(1 - a_t) eps) / sqrt(a_t)``; flow: ``x_sigma - sigma v``), and
    the map is affine in the prediction."""
    x = inputs(policy, family, seed=1)
    noisy = policy.add_noise(x.clean, x.noise, x.timesteps)
    target = policy.training_target(x.clean, x.noise, x.timesteps)
    clean = policy.predicted_clean(noisy, target, x.timesteps)
    assert clean.shape == x.clean.shape
    torch.testing.assert_close(clean, x.clean, atol=1e-4, rtol=1e-4)
    if family in FLOW_FAMILIES:
        sigma = (x.timesteps / policy.num_train_timesteps).view(-1, *[1] * (noisy.ndim - 1))
        torch.testing.assert_close(clean, noisy - sigma * target)
    zero = policy.predicted_clean(noisy, torch.zeros_like(target), x.timesteps)
    twice = policy.predicted_clean(noisy, 2 * target, x.timesteps)
    torch.testing.assert_close(twice - clean, clean - zero, atol=1e-4, rtol=1e-4)


def test_v_prediction_noises_and_targets_as_diffusers(
    lora_pipeline: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    scheduler = sd_v1_ddim_scheduler(prediction_type="v_prediction", zero_terminal_snr=True)
    monkeypatch.setattr(lora_pipeline.pipeline, "scheduler", scheduler)
    x = inputs(lora_pipeline, "sd")
    t = torch.tensor([999.0, 321.0])  # 999: alpha_bar = 0 at zero terminal SNR, x_t = noise
    target = lora_pipeline.training_target(x.clean, x.noise, t)
    expected = scheduler.get_velocity(x.clean, x.noise, t.long())
    torch.testing.assert_close(target, expected, atol=1e-6, rtol=1e-6)
    noisy = lora_pipeline.add_noise(x.clean, x.noise, t)
    torch.testing.assert_close(noisy, scheduler.add_noise(x.clean, x.noise, t.long()))
    torch.testing.assert_close(noisy[0], x.noise[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("scale", [0.5, 1.0, 4.5])
def test_predict_equals_the_stock_model_call(policy: Any, family: str, scale: float) -> None:
    """As the stock pipelines, a guidance scale at or below 1 runs the conditional pass alone
    (FLUX.1-dev's embedded guidance takes any scale)."""
    x = inputs(policy, family, seed=2)
    noisy = policy.add_noise(x.clean, x.noise, x.timesteps)
    conditioning = encoded(policy)
    out = policy.predict(conditioning, noisy, x.timesteps, guidance_scale=scale)
    with torch.no_grad():
        t = x.timesteps.long() if family in DDIM_FAMILIES else x.timesteps
        expected = STOCK_PREDICT[family](policy, noisy, t, scale)
    assert out.shape == noisy.shape
    torch.testing.assert_close(out.detach(), expected, atol=2e-5, rtol=1e-5)
    params = [p for p in policy.trainable_parameters().values()]
    grads = torch.autograd.grad(out.square().sum(), params, allow_unused=True)
    assert any(g is not None and bool(g.abs().sum() > 0) for g in grads)


def test_predict_through_a_wrapped_denoiser(policy: Any, family: str) -> None:
    x = inputs(policy, family, seed=3)
    conditioning = encoded(policy)
    with torch.no_grad():
        own = policy.predict(conditioning, x.clean, x.timesteps, guidance_scale=2.0)
        wrapped = policy.predict(
            conditioning, x.clean, x.timesteps, guidance_scale=2.0,
            denoiser=Wrapped(policy.denoiser),
        )  # fmt: skip
    assert torch.equal(own, wrapped)


def test_decode_equals_the_stock_decode_and_is_differentiable(policy: Any, family: str) -> None:
    latents = inputs(policy, family, seed=4).clean.requires_grad_(True)
    images = policy.decode(latents)
    assert images.dtype == torch.float32
    assert images.shape[:-2] == (len(PROMPTS), *FRAMES.get(family, ()), 3)
    assert float(images.detach().min()) >= 0 and float(images.detach().max()) <= 1
    with torch.no_grad():
        expected = STOCK_DECODE.get(family, stock_decode)(policy, latents)
    torch.testing.assert_close(images.detach(), expected)
    weights = torch.randn(images.shape, generator=torch.Generator().manual_seed(5))
    (grad,) = torch.autograd.grad((images * weights).sum(), latents)
    assert bool(torch.isfinite(grad).all()) and bool(grad.abs().sum() > 0)


def test_encode_images_is_the_stock_posterior_mean_normalised(policy: Any, family: str) -> None:
    """``encode_images`` is ``vae.encode(2 x - 1).latent_dist.mean`` normalised as the family's
    pipeline normalises (DDIM ``z * scaling_factor``; flow ``(z - shift_factor) *
    scaling_factor``; the video VAEs ``(z - latents_mean) / latents_std``), in the shape of a
    rollout's final latents at the images' size."""
    height, width = 64, 32  # not square: a swapped side would show
    shape = (len(PROMPTS), *FRAMES.get(family, ()), 3, height, width)
    images = torch.rand(shape, generator=torch.Generator().manual_seed(7))
    latents = policy.encode_images(images)
    vae = policy.pipeline.vae
    config = vae.config
    assert latents.dtype == torch.float32
    if family == "qwenimage":  # one frame; (z - mean) / std, as diffusers' Qwen-Image training
        with torch.no_grad():
            z = vae.encode((images * 2 - 1)[:, :, None]).latent_dist.mean
        mean, std = video_vae_statistics(vae)
        torch.testing.assert_close(latents, ((z - mean) * (1.0 / std))[:, :, 0])
    elif family == "wan":  # the video VAE takes channels before frames
        with torch.no_grad():
            z = vae.encode((images * 2 - 1).transpose(1, 2)).latent_dist.mean
        mean, std = video_vae_statistics(vae)
        torch.testing.assert_close(latents, (z - mean) * (1.0 / std))
    else:
        assert getattr(config, "latents_mean", None) is None  # the tiny VAEs have no mean/std
        with torch.no_grad():
            z = vae.encode(images * 2 - 1).latent_dist.mean
        shift = config.shift_factor if family in ("sd3", "flux") else 0.0
        assert family in ("sd", "sdxl") or shift != 0.0  # the tiny flow VAEs have a shift
        torch.testing.assert_close(latents, (z - shift) * config.scaling_factor)
    out = policy.rollout(
        encoded(policy), num_steps=2, guidance_scale=1.0,
        generator=torch.Generator().manual_seed(8), height=height, width=width,
    )  # fmt: skip
    final = out.final_latents if out.final_latents is not None else out.latents[:, -1]
    assert latents.shape == final.shape
    with pytest.raises(ValueError, match=r"images must have values in \[0, 1\]"):
        policy.encode_images(images * 2 - 0.5)
    with pytest.raises(ValueError, match=r"images' sides must be multiples of \d+ pixels"):
        policy.encode_images(images[..., :60, :])


def test_vae_encode_undoes_a_latents_mean_and_std(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``latents_mean`` and ``latents_std`` in the VAE's config (SDXL's replacement VAEs),
    :func:`vae_encode` is ``(z - latents_mean) * scaling_factor / latents_std``, and
    :func:`vae_decode` of it hands the VAE back its posterior mean ``z``."""
    latents_mean, latents_std = [0.1, -0.2, 0.3, 0.0], [2.0, 0.5, 1.0, 4.0]
    vae = AutoencoderKL(
        block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
        layers_per_block=1, sample_size=16, scaling_factor=0.5,
        latents_mean=latents_mean, latents_std=latents_std,
    ).eval()  # fmt: skip
    handed: list[Tensor] = []
    stock_decode_fn = vae.decode

    def recording_decode(z: Tensor, **kwargs: Any) -> Any:
        handed.append(z)
        return stock_decode_fn(z, **kwargs)

    monkeypatch.setattr(vae, "decode", recording_decode)
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        latents = vae_encode(vae, images)
        z = vae.encode(images * 2 - 1).latent_dist.mean
        vae_decode(vae, latents)
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (latents_mean, latents_std))
    torch.testing.assert_close(latents, (z - mean) * 0.5 / std)
    torch.testing.assert_close(handed[0], z)


class UserPipeline(DDPOStableDiffusionPipeline):
    """TRL's abstract members only, over another pipeline's components (no image processor)."""

    def __init__(self, other: Any) -> None:
        self.other = other

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    unet = property(lambda self: self.other.unet)  # type: ignore[assignment]
    vae = property(lambda self: self.other.vae)  # type: ignore[assignment]
    tokenizer = property(lambda self: self.other.tokenizer)  # type: ignore[assignment]
    scheduler = property(lambda self: self.other.scheduler)  # type: ignore[assignment]
    text_encoder = property(lambda self: self.other.text_encoder)  # type: ignore[assignment]

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        pass

    def save_pretrained(self, output_dir: str) -> None:
        raise NotImplementedError

    def get_trainable_layers(self) -> Any:
        return self.unet


def test_a_trl_style_pipeline_gets_the_members_from_trls(lora_pipeline: Any) -> None:
    """The interface's members need only TRL's: the same outputs as the default pipeline."""
    user = UserPipeline(lora_pipeline)
    assert (user.prediction_type, user.num_train_timesteps) == ("epsilon", 1000)
    x = inputs(lora_pipeline, "sd", seed=6)
    conditioning = user.encode(PROMPTS, "")
    with torch.no_grad():
        assert torch.equal(
            user.predict(conditioning, x.clean, x.timesteps, guidance_scale=3.0),
            lora_pipeline.predict(conditioning, x.clean, x.timesteps, guidance_scale=3.0),
        )
        assert torch.equal(user.decode(x.clean), lora_pipeline.decode(x.clean))
    assert torch.equal(
        user.add_noise(x.clean, x.noise, x.timesteps),
        lora_pipeline.add_noise(x.clean, x.noise, x.timesteps),
    )


# ---- refusals -------------------------------------------------------------------------------


def test_bad_arguments_are_refused_by_name(policy: Any, family: str) -> None:
    x = inputs(policy, family)
    conditioning = encoded(policy)
    num_train = policy.num_train_timesteps
    # Shapes that disagree fail the suite's type check first (ValueError without it).
    with pytest.raises((ValueError, *TYPE_ERRORS)):
        policy.add_noise(x.clean, x.noise, x.timesteps[:1])
    with pytest.raises((ValueError, *TYPE_ERRORS)):
        policy.training_target(x.clean, x.noise[:, :1], x.timesteps)
    with pytest.raises(ValueError, match="timesteps must"):
        policy.add_noise(x.clean, x.noise, torch.tensor([0.0, num_train + 1.0]))
    with pytest.raises(ValueError, match="timesteps must"):
        policy.predict(conditioning, x.clean, torch.tensor([-1.0, 0.0]))
    with pytest.raises(ValueError, match="guidance_scale=nan"):
        policy.predict(conditioning, x.clean, x.timesteps, guidance_scale=float("nan"))
    with pytest.raises(ValueError, match="conditioning has 1 rows for latents of batch 2"):
        policy.predict(conditioning.select(slice(0, 1)), x.clean, x.timesteps)
    if family in DDIM_FAMILIES:
        with pytest.raises(ValueError, match=r"whole numbers.*got timesteps=\[10\.5\]"):
            policy.add_noise(x.clean, x.noise, torch.tensor([10.5, 3.0]))
        with pytest.raises(ValueError, match=r"got timesteps=\[1000\]"):
            policy.predict(conditioning, x.clean, torch.tensor([1000, 3]))


def test_shape_checks_name_the_argument() -> None:
    """What the type check catches in the suite is a ValueError naming the argument without
    it."""
    clean = torch.zeros(2, 4, 8, 8)
    with pytest.raises(ValueError, match=r"timesteps must have shape \(batch,\) = \(2,\)"):
        check_noising_args(clean, clean, torch.zeros(3))
    with pytest.raises(ValueError, match=r"noise must have clean's shape \(2, 4, 8, 8\)"):
        check_noising_args(clean, clean[:, :1], torch.zeros(2))
    with pytest.raises(TypeError, match="timesteps must be a tensor of integers or floats"):
        check_timesteps_shape(torch.zeros(2, dtype=torch.bool), clean, "clean")
    conditioning = Conditioning({"prompt_embeds": torch.zeros(2, 3, 5)})
    with pytest.raises(ValueError, match=r"latents must be \(batch, channels, height, width\)"):
        check_predict_args(conditioning, clean[0], torch.zeros(2))
