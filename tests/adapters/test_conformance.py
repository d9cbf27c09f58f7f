"""What every model family must do, one suite over the six tiny families (SD, SDXL, SD3,
FLUX.1-dev, Qwen-Image, Wan2.1 text-to-video), against stock diffusers: sampling draws the stock
pipeline's images (Wan's videos) for the same generator, ``encode`` is the stock
``encode_prompt``, the same seed gives the same rollout, the reference policy is the model before
fine-tuning (LoRA and full), LoRA and full saves load in stock diffusers (and in ours) and draw
the same images, gradient checkpointing gives the same gradients, ``load_policy`` reads the
family from ``model_index.json``, and each policy refuses another family's folder naming its
class.

The boundary's other members have their suites beside this one: ``test_sampling_boundary.py``
(re-scoring gives ratio 1, schedule rows, ``grad_steps``, per-call sizes, DDIM's ``eta``) and
``test_model_members.py`` (``predict``, ``add_noise``, ``training_target``, ``decode``). What is
one family's own (FLUX's packing and guidance embedding, the flow shift schedules, the flow
window, SDXL's micro-conditioning, SD's TRL interface) stays in that family's files.
"""

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from diffusers import (
    DDIMScheduler,
    FluxPipeline,
    QwenImagePipeline,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    WanPipeline,
)
from torch import Tensor

from ddpo.adapters import (
    DefaultDDPOFluxPipeline,
    DefaultDDPOQwenImagePipeline,
    DefaultDDPOStableDiffusion3Pipeline,
    DefaultDDPOStableDiffusionPipeline,
    DefaultDDPOStableDiffusionXLPipeline,
    DefaultDDPOWanPipeline,
    load_policy,
    model_family,
)
from ddpo.adapters.wan.checks import wan_euler_scheduler
from ddpo.policy import PolicyRollout

pytestmark = pytest.mark.slow

PROMPTS = ["a red circle", "a blue square"]
STEPS = 3
SIDE = 64  # the tiny models' native image side
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


# ---- the family table -------------------------------------------------------------------------


def _no_grad_encode(fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():  # as ours (autograd on may pick other attention kernels)
            return fn(*args, **kwargs)

    return wrapped


@_no_grad_encode
def stock_encode_sd(stock: Any, policy: Any, negative: str) -> dict[str, Tensor]:
    embeds, negative_embeds = stock.encode_prompt(
        PROMPTS, "cpu", 1, True, negative_prompt=[negative] * 2 if negative else None
    )
    return {"prompt_embeds": embeds, "negative_prompt_embeds": negative_embeds}


@_no_grad_encode
def stock_encode_sdxl(stock: Any, policy: Any, negative: str) -> dict[str, Tensor]:
    embeds, negative_embeds, pooled, negative_pooled = stock.encode_prompt(
        PROMPTS, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True,
        negative_prompt=[negative] * 2 if negative else None,
    )  # fmt: skip
    time_ids = stock._get_add_time_ids(
        (SIDE, SIDE), (0, 0), (SIDE, SIDE), dtype=embeds.dtype,
        text_encoder_projection_dim=stock.text_encoder_2.config.projection_dim,
    )  # fmt: skip
    return {
        "prompt_embeds": embeds,
        "negative_prompt_embeds": negative_embeds,
        "pooled_prompt_embeds": pooled,
        "negative_pooled_prompt_embeds": negative_pooled,
        "add_time_ids": time_ids.expand(len(PROMPTS), -1),
    }


@_no_grad_encode
def stock_encode_sd3(stock: Any, policy: Any, negative: str) -> dict[str, Tensor]:
    embeds, negative_embeds, pooled, negative_pooled = stock.encode_prompt(
        PROMPTS, None, None, device="cpu", do_classifier_free_guidance=True,
        negative_prompt=[negative] * 2 if negative else None,
        max_sequence_length=policy.max_sequence_length,
    )  # fmt: skip
    return {
        "prompt_embeds": embeds,
        "negative_prompt_embeds": negative_embeds,
        "pooled_prompt_embeds": pooled,
        "negative_pooled_prompt_embeds": negative_pooled,
    }


@_no_grad_encode
def stock_encode_flux(stock: Any, policy: Any, negative: str) -> dict[str, Tensor]:
    # FLUX.1's guidance is embedded: it has no negative prompt, which ours ignores
    embeds, pooled, _ = stock.encode_prompt(
        PROMPTS, None, device="cpu", max_sequence_length=policy.max_sequence_length
    )
    return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}


@_no_grad_encode
def stock_encode_qwenimage(stock: Any, policy: Any, negative: str) -> dict[str, Tensor]:
    # ours pads every row with masked zeros to the policy's max_sequence_length (so that rows
    # encoded apart concatenate); the stock pads to the batch's longest prompt (no mask if none)
    length, out = policy.max_sequence_length, {}
    for prefix, texts in (("", PROMPTS), ("negative_", [negative] * len(PROMPTS))):
        embeds, mask = stock.encode_prompt(texts, device="cpu", max_sequence_length=length)
        if mask is None:
            mask = torch.ones(embeds.shape[:2], dtype=torch.long)
        missing = length - embeds.shape[1]
        out[f"{prefix}prompt_embeds"] = F.pad(embeds, (0, 0, 0, missing))
        out[f"{prefix}prompt_embeds_mask"] = F.pad(mask, (0, missing))
    return out


@_no_grad_encode
def stock_encode_wan(stock: Any, policy: Any, negative: str) -> dict[str, Tensor]:
    embeds, negative_embeds = stock.encode_prompt(
        PROMPTS, negative_prompt=[negative] * 2 if negative else None, device="cpu",
        max_sequence_length=policy.max_sequence_length,
    )  # fmt: skip
    return {"prompt_embeds": embeds, "negative_prompt_embeds": negative_embeds}


def stock_guidance_scale(guidance: float, negative: str) -> dict[str, Any]:
    """The stock call's ``guidance_scale`` (and the negative prompt, where one is given)."""
    return {"guidance_scale": guidance} | (
        {"negative_prompt": [negative] * len(PROMPTS)} if negative else {}
    )


def stock_true_cfg_scale(guidance: float, negative: str) -> dict[str, Any]:
    """Qwen-Image's stock call: ``true_cfg_scale``, which guides only with a negative prompt
    (``""`` included; ours always has one)."""
    return {"true_cfg_scale": guidance} | (
        {"negative_prompt": [negative] * len(PROMPTS)} if guidance > 1 else {}
    )


@dataclass(frozen=True)
class Family:
    """A family as this suite drives it.

    Attributes:
        name: the family's name in `ddpo.adapters.FAMILIES`.
        path: the session fixture of its tiny folder (``tests/adapters/conftest.py``).
        shared: the session fixture of its policy with fresh LoRA adapters (read only here).
        policy_class: our policy class (LoRA: ``use_lora=True``; full: ``use_lora=False``).
        stock_class: the stock diffusers pipeline of its folders.
        ddim: a DDIM family, sampled against the stock pipeline with a DDIM scheduler at
            ``eta=1`` (the same generator draws the same step noise; our DDIM policy refuses
            ``eta=0``, which has no log-probabilities); else a flow family, sampled at
            ``noise_level=0`` (its ODE) against the stock flow-matching Euler sampler.
        guidance: a guidance scale above 1 (classifier-free, or FLUX.1-dev's embedded one).
        negative_prompt: whether the family takes a negative prompt (not FLUX.1).
        stock_encode: the stock ``encode_prompt``, as ``encode``'s tensors.
        stock_call: extra arguments of the stock pipeline's call.
        stock_guidance: the stock call's arguments for a guidance scale and a negative prompt
            (Qwen-Image's true CFG: ``true_cfg_scale``, with a negative prompt to guide).
        frames: the frame axis of its samples: ``()`` for images ``(batch, 3, H, W)``, Wan's
            tiny ``(5,)`` for videos ``(batch, 5, 3, H, W)`` (the stock output's ``frames``).
        stock_scheduler: the scheduler our flow policy samples with, from the stock one (Wan:
            flow-matching Euler of the folder's UniPC ``flow_shift``); ``None``: the folder's.
    """

    name: str
    path: str
    shared: str
    policy_class: type[Any]
    stock_class: type[Any]
    ddim: bool
    guidance: float
    negative_prompt: bool
    stock_encode: Callable[[Any, Any, str], dict[str, Tensor]]
    stock_call: dict[str, Any] = field(default_factory=dict)
    stock_guidance: Callable[[float, str], dict[str, Any]] = stock_guidance_scale
    frames: tuple[int, ...] = ()
    stock_scheduler: Callable[[Any], Any] | None = None

    def __str__(self) -> str:
        return self.name


FAMILIES = (
    Family("sd", "tiny_path", "lora_pipeline", DefaultDDPOStableDiffusionPipeline,
           StableDiffusionPipeline, True, 5.0, True, stock_encode_sd, {"eta": 1.0}),
    Family("sdxl", "sdxl_path", "sdxl_policy", DefaultDDPOStableDiffusionXLPipeline,
           StableDiffusionXLPipeline, True, 5.0, True, stock_encode_sdxl, {"eta": 1.0}),
    Family("sd3", "sd3_path", "sd3_policy", DefaultDDPOStableDiffusion3Pipeline,
           StableDiffusion3Pipeline, False, 5.0, True, stock_encode_sd3),
    Family("flux", "flux_path", "flux_policy", DefaultDDPOFluxPipeline, FluxPipeline, False,
           3.5, False, stock_encode_flux, {"max_sequence_length": 512}),  # ours' default
    Family("qwenimage", "qwenimage_path", "qwenimage_policy", DefaultDDPOQwenImagePipeline,
           QwenImagePipeline, False, 4.0, True, stock_encode_qwenimage,
           stock_guidance=stock_true_cfg_scale),
    Family("wan", "wan_path", "wan_policy", DefaultDDPOWanPipeline, WanPipeline, False, 5.0,
           True, stock_encode_wan, {"num_frames": 5}, frames=(5,),
           stock_scheduler=wan_euler_scheduler),
)  # fmt: skip
"""The six families; a new family adds a row (and its fixtures in conftest.py)."""


@pytest.fixture(params=FAMILIES, ids=str, scope="module")
def family(request: pytest.FixtureRequest) -> Family:
    spec: Family = request.param
    return spec


@pytest.fixture(scope="module")
def folder(family: Family, request: pytest.FixtureRequest) -> Path:
    path: Path = request.getfixturevalue(family.path)
    return path


@pytest.fixture
def shared(family: Family, request: pytest.FixtureRequest) -> Any:
    """The family's session policy with fresh LoRA adapters: the model before fine-tuning."""
    return request.getfixturevalue(family.shared)


def new_policy(family: Family, folder: Path, **kwargs: Any) -> Any:
    policy = family.policy_class(folder, **kwargs)
    policy.set_progress_bar_config(disable=True)
    return policy


def perturb(policy: Any, *, seed: int, scale: float) -> None:
    """A seeded random offset of every trainable parameter (a stand-in for fine-tuning)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(policy.trainable_parameters().items()):
            param.add_(scale * torch.randn(param.shape, generator=gen, dtype=param.dtype))


@pytest.fixture(scope="module")
def tuned_lora(family: Family, folder: Path) -> Any:
    """The family's policy with rank-2 LoRA adapters (alpha 4), changed as fine-tuning would."""
    policy = new_policy(family, folder, lora_rank=2, lora_alpha=4)
    perturb(policy, seed=1, scale=0.1)
    return policy


@pytest.fixture(scope="module")
def tuned_full(family: Family, folder: Path) -> Any:
    """The family's policy training its whole denoiser, changed as fine-tuning would."""
    policy = new_policy(family, folder, use_lora=False)
    perturb(policy, seed=2, scale=0.01)
    return policy


@pytest.fixture
def tuned(request: pytest.FixtureRequest, use_lora: bool) -> Any:
    return request.getfixturevalue("tuned_lora" if use_lora else "tuned_full")


def stock_pipeline(family: Family, folder: Path, *, ddim: bool = True) -> Any:
    """The stock pipeline of ``folder``; for a DDIM family with a DDIM scheduler from the
    folder's config when ``ddim`` (the scheduler our policy samples with; Wan's flow-matching
    Euler, its ``stock_scheduler``)."""
    stock = family.stock_class.from_pretrained(folder)
    if family.ddim and ddim:
        stock.scheduler = DDIMScheduler.from_config(stock.scheduler.config)
    if family.stock_scheduler is not None and ddim:
        stock.scheduler = family.stock_scheduler(stock.scheduler)
    stock.set_progress_bar_config(disable=True)
    return stock


def images(
    pipe: Any, family: Family, *, stock: bool, guidance: float, negative: str = "", seed: int = 3
) -> Any:
    """The images (and, for ours, the trajectory) of ``PROMPTS`` in the family's deterministic
    mode, ``STEPS`` steps at ``SIDE`` pixels."""
    kwargs: dict[str, Any] = {"num_inference_steps": STEPS, "height": SIDE, "width": SIDE,
                              "output_type": "pt"}  # fmt: skip
    if stock:
        kwargs |= family.stock_call | family.stock_guidance(guidance, negative)
    else:
        kwargs |= {"eta": 1.0} if family.ddim else {"noise_level": 0}
        kwargs["guidance_scale"] = guidance
        if negative:
            kwargs["negative_prompt"] = negative
    out = pipe(PROMPTS, generator=torch.Generator().manual_seed(seed), **kwargs)
    return out if not stock else stock_samples(out)


def stock_samples(out: Any) -> Tensor:
    """A stock pipeline output's images, or a video pipeline's ``frames``."""
    samples: Tensor = out.frames if hasattr(out, "frames") else out.images
    return samples


@pytest.fixture(scope="module")
def base_images(family: Family, folder: Path) -> Tensor:
    """The stock pipeline's images of the model before fine-tuning (guided)."""
    stock = stock_pipeline(family, folder)
    result: Tensor = images(stock, family, stock=True, guidance=family.guidance)
    return result


def our_images(policy: Any, family: Family) -> Tensor:
    result: Tensor = images(policy, family, stock=False, guidance=family.guidance).images
    return result


def no_pickles(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if p.suffix in PICKLE_SUFFIXES]


# ---- sampling and encoding equal stock diffusers ----------------------------------------------


@pytest.mark.parametrize("guided", [False, True], ids=["unguided", "guided"])
def test_sampling_draws_the_stock_images_for_the_same_generator(
    family: Family, shared: Any, folder: Path, guided: bool
) -> None:
    """Fresh LoRA adapters start at zero, so ours draws the stock pipeline's images for the same
    generator (DDIM families: the same step noise at ``eta=1``; flow families: the ODE)."""
    guidance = family.guidance if guided else 1.0
    negative = "blue" if guided and family.negative_prompt else ""
    stock = stock_pipeline(family, folder)
    theirs = images(stock, family, stock=True, guidance=guidance, negative=negative)
    mine = images(shared, family, stock=False, guidance=guidance, negative=negative)
    torch.testing.assert_close(mine.images, theirs, atol=2e-5, rtol=0)
    assert mine.images.shape == (2, *family.frames, 3, SIDE, SIDE)
    assert float((mine.images - 0.5).abs().mean()) > 0.01  # not a blank image
    # every latent, x_T first: the generator's first draw, as in diffusers
    assert mine.latents.shape[:2] == (2, STEPS + 1)
    first = torch.randn(mine.latents[:, 0].shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(mine.latents[:, 0], first, atol=0, rtol=0)
    # DDIM records each step's log-prob; the flow ODE has none
    assert mine.log_probs.shape == (2, STEPS if family.ddim else 0)


def test_deterministic_images_are_the_stock_deterministic_sampler(
    family: Family, shared: Any, folder: Path
) -> None:
    """The family's deterministic sampler (`ddpo.policy.PolicyOptions.deterministic_images`,
    what ``ddpo eval`` samples with): the stock pipeline at ``eta=0`` (DDIM) or its flow ODE,
    image ``i`` from ``generators[i]``, so that an image depends on its own seed only."""
    stock = stock_pipeline(family, folder)
    seeds = [5, 9]
    call = {**family.stock_call, "num_inference_steps": STEPS, "height": SIDE, "width": SIDE,
            "output_type": "pt", **family.stock_guidance(family.guidance, "")}  # fmt: skip
    if family.ddim:
        call["eta"] = 0.0
    with torch.no_grad():
        theirs = stock(PROMPTS, generator=[torch.Generator().manual_seed(s) for s in seeds], **call)
    mine = shared.deterministic_images(
        PROMPTS,
        num_steps=STEPS,
        guidance_scale=family.guidance,
        generators=[torch.Generator().manual_seed(s) for s in seeds],
    )
    torch.testing.assert_close(mine, stock_samples(theirs).float(), atol=2e-5, rtol=0)
    alone = shared.deterministic_images(
        PROMPTS[1:],
        num_steps=STEPS,
        guidance_scale=family.guidance,
        generators=[torch.Generator().manual_seed(seeds[1])],
    )
    torch.testing.assert_close(alone[0], mine[1], atol=2e-5, rtol=0)
    with pytest.raises(ValueError, match="one generator per prompt, got 1 for 2 prompts"):
        shared.deterministic_images(
            PROMPTS, num_steps=STEPS, guidance_scale=1.0, generators=[torch.Generator()]
        )


@pytest.mark.parametrize("negative", ["", "blue"], ids=["empty-negative", "negative"])
def test_encode_equals_stock_encode_prompt(
    family: Family, shared: Any, folder: Path, negative: str
) -> None:
    stock = stock_pipeline(family, folder)
    conditioning = shared.encode(PROMPTS, negative)
    expected = family.stock_encode(stock, shared, negative)
    assert set(conditioning.tensors) == set(expected)
    for name, tensor in expected.items():  # equal up to float rounding (batched differently)
        ours = conditioning[name]
        assert (ours.shape, ours.dtype) == (tensor.shape, tensor.dtype), name
        assert float((ours - tensor).abs().max()) <= 2e-6, name
    embeds = conditioning["prompt_embeds"]
    assert not torch.allclose(embeds[0], embeds[1])  # the prompts are told apart


def test_the_same_seed_gives_the_same_rollout(family: Family, shared: Any) -> None:
    conditioning = shared.encode(PROMPTS, "")

    def rollout(seed: int) -> PolicyRollout:
        out: PolicyRollout = shared.rollout(
            conditioning, num_steps=STEPS, guidance_scale=family.guidance,
            generator=torch.Generator().manual_seed(seed),
        )  # fmt: skip
        return out

    a, b, c = rollout(7), rollout(7), rollout(8)
    for name in PolicyRollout._fields:
        first, second = getattr(a, name), getattr(b, name)
        if first is None:
            assert second is None, name
        else:
            assert torch.equal(first, second), name
    assert not torch.allclose(a.latents[:, -1], c.latents[:, -1])
    assert not torch.allclose(a.log_probs, c.log_probs)
    # and the pipeline's own call (its sampler, the policy's stochasticity)
    calls = [
        shared(PROMPTS, num_inference_steps=STEPS, guidance_scale=family.guidance,
               output_type="pt", generator=torch.Generator().manual_seed(7))
        for _ in range(2)
    ]  # fmt: skip
    for name in ("images", "latents", "log_probs"):
        assert torch.equal(getattr(calls[0], name), getattr(calls[1], name)), name
    assert calls[0].log_probs.shape == (2, shared.transitions_per_rollout(STEPS))


# ---- the reference policy ---------------------------------------------------------------------


def probe_score(policy: Any, family: Family, **kwargs: Any) -> Any:
    """``score`` of one fixed guided transition (the second of ``STEPS`` steps)."""
    conditioning = policy.encode(PROMPTS[:1], "")
    with torch.no_grad():
        out = policy.rollout(
            conditioning, num_steps=STEPS, guidance_scale=family.guidance,
            generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
    x = torch.randn(out.latents[:, 1].shape, generator=torch.Generator().manual_seed(5))
    return policy.score(conditioning, x, 0.9 * x, out.schedule[1:2], **kwargs)


@pytest.mark.parametrize("use_lora", [True, False], ids=["lora", "full"])
def test_the_reference_policy_is_the_model_before_fine_tuning(
    family: Family, shared: Any, tuned: Any
) -> None:
    with torch.no_grad():
        base = probe_score(shared, family).mean
        fine_tuned = probe_score(tuned, family).mean
    with tuned.reference_policy():
        reference = probe_score(tuned, family)  # with autograd on
        # the trainer passes its (maybe DDP-wrapped) denoiser: the reference still holds
        through_denoiser = probe_score(tuned, family, denoiser=tuned.denoiser)
    with torch.no_grad():
        after = probe_score(tuned, family).mean
    assert not torch.allclose(base, fine_tuned, atol=1e-4)
    torch.testing.assert_close(reference.mean.detach(), base, atol=1e-6, rtol=0)
    torch.testing.assert_close(through_denoiser.mean.detach(), base, atol=1e-6, rtol=0)
    torch.testing.assert_close(after, fine_tuned, atol=0, rtol=0)  # restored on exit
    # nothing of the reference trains (adapters off, or a frozen copy)
    assert not reference.log_prob.requires_grad and not through_denoiser.log_prob.requires_grad


# ---- saving in stock diffusers' formats -------------------------------------------------------


def test_lora_weights_load_in_stock_diffusers_and_draw_the_same_images(
    family: Family, folder: Path, tuned_lora: Any, base_images: Tensor, tmp_path: Path
) -> None:
    mine = our_images(tuned_lora, family)
    lora = tuned_lora.save_lora_weights(tmp_path / "lora")
    assert lora == tmp_path / "lora" and (lora / "pytorch_lora_weights.safetensors").is_file()
    no_pickles(lora)
    stock = stock_pipeline(family, folder)
    stock.load_lora_weights(lora)
    theirs = images(stock, family, stock=True, guidance=family.guidance)
    torch.testing.assert_close(mine, theirs, atol=2e-5, rtol=0)
    assert not torch.allclose(base_images, theirs, atol=1e-3)  # the LoRA acts


def test_a_lora_folder_loads_in_ours_on_its_recorded_base(
    family: Family, folder: Path, shared: Any, tuned_lora: Any, tmp_path: Path
) -> None:
    lora = tuned_lora.save_lora_weights(tmp_path / "lora")
    record = json.loads((lora / "ddpo_base_model.json").read_text())
    assert record["pretrained_model_name"] == str(folder)
    again = new_policy(family, lora)
    assert (again.lora_rank, again.lora_alpha) == (2, 4.0)
    theirs, ours = again.trainable_parameters(), tuned_lora.trainable_parameters()
    assert set(theirs) == set(ours) and all(torch.equal(theirs[k], ours[k]) for k in ours)
    torch.testing.assert_close(
        our_images(again, family), our_images(tuned_lora, family), atol=1e-6, rtol=0
    )
    with torch.no_grad():
        base = probe_score(shared, family).mean
        with again.reference_policy():  # the loaded LoRA's reference is still its base
            reference = probe_score(again, family).mean
    torch.testing.assert_close(reference, base, atol=1e-6, rtol=0)


@pytest.mark.parametrize("use_lora", [True, False], ids=["lora-fused", "full"])
def test_save_pretrained_loads_in_stock_diffusers_and_in_ours(
    family: Family, tuned: Any, base_images: Tensor, tmp_path: Path, use_lora: bool
) -> None:
    mine = our_images(tuned, family)
    final = tmp_path / "final"
    tuned.save_pretrained(final)
    no_pickles(final)
    index = json.loads((final / "model_index.json").read_text())
    assert index["_class_name"] == family.stock_class.__name__
    assert not (final / "pytorch_lora_weights.safetensors").exists()  # fused, not applied twice
    stock = stock_pipeline(family, final, ddim=False)
    assert type(stock.scheduler) is type(tuned.scheduler)  # DDIM families save DDIM
    theirs = images(stock, family, stock=True, guidance=family.guidance)
    # a fused LoRA equals the adapters up to the float rounding of W + s B A
    torch.testing.assert_close(mine, theirs, atol=5e-5, rtol=0)
    assert not torch.allclose(base_images, theirs, atol=1e-3)  # the fine-tuned weights were saved
    again = new_policy(family, final, use_lora=use_lora)
    torch.testing.assert_close(our_images(again, family), theirs, atol=2e-5, rtol=0)
    # the live policy keeps its (unfused) adapters
    assert torch.equal(our_images(tuned, family), mine)


# ---- training ---------------------------------------------------------------------------------


def test_gradient_checkpointing_gives_the_same_gradients(family: Family, tuned_lora: Any) -> None:
    policy = tuned_lora
    denoiser = policy.denoiser
    conditioning = policy.encode(PROMPTS, "")
    out = policy.rollout(
        conditioning, num_steps=STEPS, guidance_scale=family.guidance,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    x = torch.randn(out.latents[:, 0].shape, generator=torch.Generator().manual_seed(0))
    calls = [0]

    def count(*_: Any) -> None:
        calls[0] += 1

    def gradients() -> tuple[dict[str, Tensor], int]:
        score = policy.score(conditioning, x, 0.9 * x, out.schedule[:2])  # two guided steps
        hooks = [m.register_forward_hook(count) for m in denoiser.modules()]
        calls[0] = 0
        try:
            score.log_prob.sum().backward()
        finally:
            for hook in hooks:
                hook.remove()
        grads = {n: p.grad.clone() for n, p in policy.trainable_parameters().items()}
        for param in policy.trainable_parameters().values():
            param.grad = None
        return grads, calls[0]

    denoiser.train()
    try:
        plain, recomputed_plain = gradients()
        policy.prepare(torch.device("cpu"), gradient_checkpointing=True)
        assert denoiser.is_gradient_checkpointing
        checkpointed, recomputed = gradients()
    finally:
        denoiser.disable_gradient_checkpointing()
        denoiser.eval()
    # without checkpointing backward runs no forward; with it, the blocks run again
    assert recomputed_plain == 0 and recomputed > 0
    assert plain.keys() == checkpointed.keys() and plain
    assert any(float(g.abs().max()) > 0 for g in plain.values())
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], atol=1e-6, rtol=1e-5)


# ---- folders ----------------------------------------------------------------------------------


def test_load_policy_reads_the_family_from_model_index(family: Family, folder: Path) -> None:
    assert model_family(folder).name == family.name
    policy = load_policy(folder, use_lora=False)
    assert type(policy) is family.policy_class and not policy.use_lora


def other_family_pairs() -> list[Any]:
    pairs = []
    for ours in FAMILIES:
        for theirs in FAMILIES:
            if ours is not theirs:
                pairs.append(pytest.param(ours, theirs, id=f"{ours}-{theirs}"))
    return pairs


@pytest.mark.parametrize(("ours", "theirs"), other_family_pairs())
def test_a_folder_of_another_family_is_refused_naming_its_class(
    ours: Family, theirs: Family, request: pytest.FixtureRequest
) -> None:
    with pytest.raises(ValueError, match=f"'{theirs.stock_class.__name__}'"):
        ours.policy_class(request.getfixturevalue(theirs.path))


def test_a_model_of_no_family_is_refused_naming_its_class(sdxl_path: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(sdxl_path, other)
    index_file = other / "model_index.json"
    index = json.loads(index_file.read_text())
    index_file.write_text(json.dumps({**index, "_class_name": "KandinskyV22Pipeline"}))
    with pytest.raises(ValueError, match="'KandinskyV22Pipeline' model; ddpo trains"):
        load_policy(other)
