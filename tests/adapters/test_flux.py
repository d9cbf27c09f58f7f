"""DefaultDDPOFluxPipeline on tiny random FLUX.1 models built from config (no hub): what is
FLUX.1's own.

Stock diffusers' ``FluxPipeline`` is the reference: the same packing and position ids, the
guidance embedding of a dev-like model (and none for a schnell-like one), the resolution-dependent
shift, LoRA on both streams' attention, FLUX's argument checks. What every family does (stock
images in the ODE limit, the stock prompt encoding, the reference policy, LoRA and full saves,
gradient checkpointing) is in ``test_conformance.py``; the flow base's window is tested on SD3
(``test_sd3.py``).
"""

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import FluxPipeline

from ddpo.adapters.flux.checks import latent_image_ids, pack_latents, unpack_latents
from ddpo.adapters.flux.policy import DefaultDDPOFluxPipeline
from ddpo.adapters.flux.tiny import (
    TinyFluxConfig,
    save_flux_pipeline,
    tiny_flux_components,
    tiny_flux_path,
)

pytestmark = pytest.mark.slow

PROMPTS = ["a red circle", "a blue square"]
SHAPE = (2, 4, 8, 8)  # unpacked latents of two 64x64 images
T5_TOKENS = 32  # a short T5 sequence keeps the tiny models fast (FLUX.1 takes 512)


@pytest.fixture(scope="module")
def schnell_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """No guidance embedding, and schnell's static schedule (shift 1, no dynamic shifting)."""
    folder = tmp_path_factory.mktemp("tiny-flux-schnell")
    components = tiny_flux_components(0, config=TinyFluxConfig(guidance_embeds=False))
    scheduler = components["scheduler"]
    components["scheduler"] = type(scheduler).from_config(
        scheduler.config, use_dynamic_shifting=False, shift=1.0
    )
    save_flux_pipeline(components, folder)
    return folder


def new_policy(folder: Path, **kwargs: Any) -> DefaultDDPOFluxPipeline:
    pipe = DefaultDDPOFluxPipeline(folder, max_sequence_length=T5_TOKENS, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def stock_pipeline(folder: Path) -> Any:
    stock = FluxPipeline.from_pretrained(folder)
    stock.set_progress_bar_config(disable=True)
    return stock


def ode_images(
    pipe: Any,
    *,
    stock: bool,
    steps: int = 3,
    guidance: float = 3.5,
    size: tuple[int, int] = (64, 64),
) -> torch.Tensor:
    extra: dict[str, Any] = {"noise_level": 0}
    if stock:
        extra = {"max_sequence_length": T5_TOKENS, "height": size[0], "width": size[1]}
    out = pipe(PROMPTS, num_inference_steps=steps, guidance_scale=guidance, output_type="pt",
               generator=torch.Generator().manual_seed(3), **extra)  # fmt: skip
    images: torch.Tensor = out.images
    return images


def test_packing_and_position_ids_equal_diffusers() -> None:
    x = torch.randn(2, 4, 8, 6, generator=torch.Generator().manual_seed(0))
    packed = pack_latents(x)
    torch.testing.assert_close(packed, FluxPipeline._pack_latents(x, 2, 4, 8, 6), atol=0, rtol=0)
    # written out: token (r, c) holds x[:, ch, 2r + i, 2c + j] at feature 4 ch + 2 i + j
    assert packed.shape == (2, 12, 16)
    for r, c, ch, i, j in [(0, 0, 0, 0, 0), (1, 2, 3, 1, 0), (3, 1, 2, 0, 1), (2, 2, 1, 1, 1)]:
        assert packed[1, 3 * r + c, 4 * ch + 2 * i + j] == x[1, ch, 2 * r + i, 2 * c + j]
    theirs = FluxPipeline._unpack_latents(packed, 8 * 8, 6 * 8, 8)
    torch.testing.assert_close(unpack_latents(packed, 8, 6), theirs, atol=0, rtol=0)
    torch.testing.assert_close(unpack_latents(packed, 8, 6), x, atol=0, rtol=0)
    ids = latent_image_ids(4, 3, device=torch.device("cpu"), dtype=torch.float32)
    expected = FluxPipeline._prepare_latent_image_ids(2, 4, 3, "cpu", torch.float32)
    torch.testing.assert_close(ids, expected, atol=0, rtol=0)
    assert ids[5].tolist() == [0.0, 1.0, 2.0]  # token 5 is row 1, column 2
    with pytest.raises(ValueError, match="even height and width"):
        pack_latents(torch.zeros(1, 4, 7, 6))
    with pytest.raises(ValueError, match=r"not 2x2 patches of 8x8"):
        unpack_latents(packed, 8, 8)


def test_guidance_embedding_acts_only_in_guidance_distilled_models(
    flux_path: Path, schnell_path: Path
) -> None:
    ours = new_policy(flux_path)
    assert ours.guidance_embeds
    low, high = (ode_images(ours, stock=False, guidance=g) for g in (1.0, 5.0))
    assert not torch.allclose(low, high, atol=1e-4)
    # re-scoring: a row's guidance scale enters the velocity, so another scale is another policy
    cond = ours.encode(PROMPTS, "")
    out = ours.rollout(cond, num_steps=3, guidance_scale=3.5,
                       generator=torch.Generator().manual_seed(0))  # fmt: skip
    rows = out.schedule[1].expand(2, -1)
    unguided = rows.clone()
    unguided[:, -1] = 1.0  # the row's guidance scale
    with torch.no_grad():
        same = ours.score(cond, out.latents[:, 1], out.latents[:, 2], rows, cfg=False)
        other = ours.score(cond, out.latents[:, 1], out.latents[:, 2], unguided, cfg=False)
    torch.testing.assert_close(same.log_prob, out.log_probs[:, 1], atol=1e-5, rtol=0)
    assert not torch.allclose(other.mean, same.mean, atol=1e-3)
    assert not torch.allclose(other.log_prob, same.log_prob, atol=1e-5)
    schnell = new_policy(schnell_path)
    assert not schnell.guidance_embeds and schnell._mu() is None
    mine = ode_images(schnell, stock=False, guidance=5.0)
    torch.testing.assert_close(mine, ode_images(schnell, stock=False, guidance=1.0), atol=0, rtol=0)
    theirs = ode_images(stock_pipeline(schnell_path), stock=True, guidance=5.0)
    torch.testing.assert_close(mine, theirs, atol=2e-5, rtol=0)
    # schnell's static schedule: sigmas linspace(1, 1/3, 3) with shift 1, then 0
    expected = torch.tensor([1.0, 2 / 3, 1 / 3, 0.0])
    torch.testing.assert_close(schnell.scheduler.sigmas, expected, atol=1e-6, rtol=0)


def test_lora_adapters_are_on_both_streams_attention(flux_policy: Any) -> None:
    """FLUX's LoRA layers: the double-stream blocks' attention (image and text projections) and
    the single-stream blocks', not the feed-forward layers (``lora_targets="attention_ff"``)."""
    names = list(flux_policy.trainable_parameters())
    assert any(n.startswith("single_transformer_blocks.") for n in names)
    assert any(".attn.add_q_proj." in n for n in names) and not any(".ff." in n for n in names)


def test_flux_arguments_get_clear_errors_before_model_work(flux_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_sequence_length=513"):
        DefaultDDPOFluxPipeline(tmp_path / "nowhere", max_sequence_length=513)
    # 72 = 9 latents: a multiple of the VAE's 8 but not of the 2x2 packing's 16
    with pytest.raises(ValueError, match=r"multiples of 16.*packing.*resolution=\(64, 72\)"):
        DefaultDDPOFluxPipeline(flux_path, resolution=(64, 72))


def test_resolution_dependent_shift_matches_stock(flux_path: Path) -> None:
    pipe = new_policy(flux_path, resolution=(64, 32))
    mine = ode_images(pipe, stock=False)
    theirs = ode_images(stock_pipeline(flux_path), stock=True, size=(64, 32))
    torch.testing.assert_close(mine, theirs, atol=2e-5, rtol=0)
    assert mine.shape == (2, 3, 64, 32)
    # mu for 4x2 = 8 packed tokens: linear through (256, 0.5) and (4096, 1.15), FLUX's values
    slope = (1.15 - 0.5) / (4096 - 256)
    mu = 0.5 + (8 - 256) * slope
    assert pipe._mu() == pytest.approx(mu)
    # sigmas: linspace(1, 1/3, 3) under the exponential time shift exp(mu) / (exp(mu) + 1/s - 1)
    base = torch.tensor([1.0, 2 / 3, 1 / 3], dtype=torch.float64)
    shifted = math.exp(mu) / (math.exp(mu) + (1 / base - 1))
    expected = torch.cat([shifted, torch.zeros(1, dtype=torch.float64)]).float()
    torch.testing.assert_close(pipe.scheduler.sigmas, expected, atol=1e-6, rtol=0)


def test_builtin_tiny_flux_folder_loads_with_the_defaults(tmp_path: Path) -> None:
    folder = tiny_flux_path(tmp_path, seed=0)
    assert tiny_flux_path(tmp_path, seed=0) == folder  # built once, then reused
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline"
    pipe = DefaultDDPOFluxPipeline(folder)
    assert pipe.resolution == (64, 64) and pipe.max_sequence_length == 512
    assert pipe.guidance_embeds and pipe.noise_level == 0.7
    assert pipe.encode(PROMPTS[:1], "")["prompt_embeds"].shape == (1, 512, 32)
    assert pipe.transitions_per_rollout(10) == 10
