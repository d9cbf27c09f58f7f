"""Trainable parameters: LoRA adapters vs the full UNet, dtypes, the reference policy."""

import pytest
import torch

from ddpo.adapters import LORA_TARGET_MODULES, DefaultDDPOStableDiffusionPipeline

pytestmark = pytest.mark.slow


def test_lora_trains_only_float32_adapters_on_attention_projections(lora_pipeline) -> None:  # type: ignore[no-untyped-def]
    pipe = lora_pipeline
    trainable = pipe.trainable_parameters()
    assert trainable, "no trainable parameters"
    for name, param in trainable.items():
        assert ".lora_A." in name or ".lora_B." in name, name
        assert any(f".{m}.lora_" in name for m in LORA_TARGET_MODULES), name
        assert param.dtype == torch.float32
    ranks = {p.shape[0] for n, p in trainable.items() if ".lora_A." in n}
    assert ranks == {4}
    # every targeted projection in every attention block got an adapter
    targeted = [n for n, _ in pipe.unet.named_modules() if n.endswith(LORA_TARGET_MODULES)]
    assert len(trainable) == 2 * len(targeted)
    assert not any(p.requires_grad for p in pipe.vae.parameters())
    assert not any(p.requires_grad for p in pipe.text_encoder.parameters())
    assert pipe.use_lora and pipe.autocast is not None
    assert pipe.get_trainable_layers() is pipe.unet


def test_full_unet_trains_every_unet_parameter_in_float32(full_pipeline) -> None:  # type: ignore[no-untyped-def]
    pipe = full_pipeline
    trainable = pipe.trainable_parameters()
    names = {n for n, _ in pipe.unet.named_parameters()}
    assert set(trainable) == names
    assert not any("lora_" in n for n in names)
    assert all(p.dtype == torch.float32 for p in trainable.values())
    assert not any(p.requires_grad for p in pipe.vae.parameters())
    assert not any(p.requires_grad for p in pipe.text_encoder.parameters())
    assert not pipe.use_lora and pipe.autocast is None


def test_lora_rank_and_alpha_are_configurable(tiny_path) -> None:  # type: ignore[no-untyped-def]
    pipe = DefaultDDPOStableDiffusionPipeline(tiny_path, lora_rank=2, lora_alpha=6)
    ranks = {p.shape[0] for n, p in pipe.trainable_parameters().items() if ".lora_A." in n}
    assert ranks == {2}
    layer = pipe.unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
    assert layer.scaling["default"] == pytest.approx(3.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_base_keeps_float32_adapters(tiny_path, dtype: torch.dtype) -> None:  # type: ignore[no-untyped-def]
    pipe = DefaultDDPOStableDiffusionPipeline(tiny_path, torch_dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    trainable = pipe.trainable_parameters()
    assert trainable and all(p.dtype == torch.float32 for p in trainable.values())
    frozen = [p for n, p in pipe.unet.named_parameters() if "lora_" not in n]
    assert all(p.dtype == dtype for p in frozen)
    assert pipe.vae.dtype == dtype and pipe.text_encoder.dtype == dtype
    if dtype == torch.float16:
        return  # CPU float16 kernels are incomplete; the dtypes are what this case checks
    out = pipe(["a red circle", "a cat"], num_inference_steps=3, guidance_scale=5.0,
               output_type="pt", generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert out.latents.dtype == torch.float32 and torch.isfinite(out.log_probs).all()
    assert out.images.dtype == torch.float32
    # re-scoring right after sampling gives the sampled log-probs with a bfloat16 base too
    embeds = pipe.encode_prompt(["a red circle", "a cat"])
    negative = pipe.encode_prompt(["", ""])
    with torch.no_grad():
        again = [pipe.score_transitions(out.latents[:, j], out.latents[:, j + 1],
                                        pipe.scheduler.timesteps[j].expand(2), embeds, negative,
                                        guidance_scale=5.0, eta=1.0).log_prob
                 for j in range(3)]  # fmt: skip
    torch.testing.assert_close(torch.stack(again, 1), out.log_probs, atol=1e-5, rtol=0)
    # gradients reach the float32 adapters through the bfloat16 base
    scored = pipe.score_transitions(out.latents[:, 0], out.latents[:, 1],
                                    pipe.scheduler.timesteps[0].expand(2), embeds,
                                    guidance_scale=1.0, eta=1.0)  # fmt: skip
    scored.log_prob.sum().backward()
    grads = [p.grad for n, p in trainable.items() if ".lora_A." in n]
    assert all(g is not None and g.dtype == torch.float32 for g in grads)
    pipe.unet.zero_grad(set_to_none=True)


def test_score_transitions_has_gradients_for_trainable_parameters(full_pipeline) -> None:  # type: ignore[no-untyped-def]
    pipe = full_pipeline
    pipe.scheduler.set_timesteps(4)
    gen = torch.Generator().manual_seed(0)
    x_t, x_prev = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    embeds = pipe.encode_prompt(["a", "b"])
    negative = pipe.encode_prompt(["", ""])
    out = pipe.score_transitions(x_t, x_prev, pipe.scheduler.timesteps[:2], embeds, negative,
                                 guidance_scale=5.0, eta=1.0)  # fmt: skip
    out.log_prob.sum().backward()
    grads = [p.grad for p in pipe.unet.parameters()]
    assert all(g is not None for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads if g is not None)
    pipe.unet.zero_grad(set_to_none=True)


def _score(pipe, unet=None):  # type: ignore[no-untyped-def]
    pipe.scheduler.set_timesteps(4)
    gen = torch.Generator().manual_seed(0)
    x_t, x_prev = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    embeds = pipe.encode_prompt(["a red circle", "a cat"])
    with torch.no_grad():
        return pipe.score_transitions(x_t, x_prev, pipe.scheduler.timesteps[:2], embeds,
                                      guidance_scale=1.0, eta=1.0, unet=unet).log_prob  # fmt: skip


@pytest.mark.parametrize("use_lora", [True, False])
def test_reference_policy_is_the_pre_fine_tuning_model(tiny_path, perturb, use_lora: bool) -> None:  # type: ignore[no-untyped-def]
    """Through TRL's ``score_transitions`` and its ``unet=`` argument (the boundary's ``score``, for
    every family, is in test_conformance.py)."""
    pipe = DefaultDDPOStableDiffusionPipeline(tiny_path, use_lora=use_lora)
    before = _score(pipe)
    perturb(pipe, seed=3, scale=0.2)
    after = _score(pipe)
    assert not torch.allclose(before, after, atol=1e-4)
    with pipe.reference_policy():
        reference = _score(pipe)
        reference_via_unet_arg = _score(pipe, unet=pipe.unet)
    torch.testing.assert_close(reference, before, atol=1e-6, rtol=0)
    torch.testing.assert_close(reference_via_unet_arg, before, atol=1e-6, rtol=0)
    torch.testing.assert_close(_score(pipe), after, atol=0, rtol=0)  # restored on exit
