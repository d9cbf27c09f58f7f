"""DefaultDDPOQwenImagePipeline on the tiny random Qwen-Image model built from config (no hub):
what is Qwen-Image's own.

Stock diffusers' ``QwenImagePipeline`` is the reference: its prompt template and the tokens it
drops, its true classifier-free guidance with the norm-preserving rescale, its resolution-shifted
schedule with ``shift_terminal``, the one-frame VAE's default size; and what this family adds:
text embeddings padded to a fixed length (rows encoded apart concatenate), the last block's
text-only layers frozen (every trainable parameter gets a gradient), Qwen-Image's own
feed-forward LoRA targets and its argument and folder checks. What every family does (stock
images, the stock prompt encoding, the reference policy, saves, gradient checkpointing) is in
``test_conformance.py`` and the boundary suites beside it.
"""

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import QwenImagePipeline
from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift

from ddpo.adapters.qwenimage.policy import (
    QWENIMAGE_FEED_FORWARD_TARGET_MODULES,
    DefaultDDPOQwenImagePipeline,
)
from ddpo.adapters.qwenimage.text import true_guidance
from ddpo.adapters.qwenimage.tiny import QWENIMAGE_TEMPLATE_WORDS
from ddpo.policy import Conditioning

pytestmark = pytest.mark.slow

PROMPTS = ["a red circle", "a blue square"]
TEXT_TOKENS = 16  # a short padded length (the default is the stock pipeline's 512)


def new_policy(folder: Path, **kwargs: Any) -> DefaultDDPOQwenImagePipeline:
    pipe = DefaultDDPOQwenImagePipeline(folder, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ode_images(pipe: Any, *, size: tuple[int, int] = (64, 64)) -> Any:
    out = pipe(PROMPTS, num_inference_steps=3, guidance_scale=4.0, noise_level=0,
               height=size[0], width=size[1], output_type="pt",
               generator=torch.Generator().manual_seed(3))  # fmt: skip
    return out.images


def copy_folder(folder: Path, tmp_path: Path, component: str, **changes: Any) -> Path:
    """A copy of ``folder`` whose ``component/config.json`` has ``changes`` (``None``: drop)."""
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    path = other / component / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))
    return other


def test_the_template_drops_its_system_turn_in_the_tiny_tokenizer(qwenimage_policy: Any) -> None:
    """The pipeline drops the first ``prompt_template_encode_start_idx`` (34) tokens, the
    template's system turn and the user turn's start in Qwen2.5-VL's vocabulary: the tiny
    tokenizer cuts the template into the same tokens, so the prompt's own tokens remain."""
    pipe = qwenimage_policy.pipeline
    tokenizer = pipe.tokenizer
    ids = tokenizer(pipe.prompt_template_encode.format("a red circle")).input_ids
    tokens = tokenizer.convert_ids_to_tokens(ids)
    start = pipe.prompt_template_encode_start_idx
    assert start == 34
    assert tokens[start - 3 :] == ["<|im_start|>", "user", "Ċ", "a", "Ġred", "Ġcircle",
                                   "<|im_end|>", "Ċ", "<|im_start|>", "assistant", "Ċ"]  # fmt: skip
    assert {"Describe", "Ġrelationships", "Ġbackground"} <= set(tokens[:start])
    assert all(word in tokens or f"Ġ{word}" in tokens for word in QWENIMAGE_TEMPLATE_WORDS)


def test_rows_encoded_apart_concatenate_to_the_batchs_encoding(qwenimage_policy: Any) -> None:
    """Every row has ``max_sequence_length`` tokens, its padding masked: the trainer's prompt
    cache encodes each prompt alone and concatenates the rows."""
    batch = qwenimage_policy.encode(PROMPTS, "blue")
    rows = Conditioning.cat([qwenimage_policy.encode([p], "blue") for p in PROMPTS])
    for name, tensor in batch.tensors.items():
        assert tensor.shape[:2] == (2, qwenimage_policy.max_sequence_length), name
        torch.testing.assert_close(rows[name], tensor, atol=2e-6, rtol=0)
    mask = batch["prompt_embeds_mask"]
    assert mask.dtype == torch.int64 and mask[:, :3].eq(1).all() and mask[:, -1].eq(0).all()
    assert batch["prompt_embeds"][mask == 0].eq(0).all()


def test_padding_to_another_length_samples_the_same_images(
    qwenimage_policy: Any, qwenimage_path: Path
) -> None:
    """Masked tokens are never attended to: 16 padded tokens sample what 512 sample."""
    short = new_policy(qwenimage_path, max_sequence_length=TEXT_TOKENS)
    assert short.encode(PROMPTS, "")["prompt_embeds"].shape[1] == TEXT_TOKENS
    torch.testing.assert_close(ode_images(short), ode_images(qwenimage_policy), atol=2e-5, rtol=0)


def test_max_sequence_length_cuts_prompts_as_the_stock_pipeline(qwenimage_path: Path) -> None:
    """A prompt longer than ``max_sequence_length`` tokens is cut, as ``encode_prompt`` cuts it."""
    policy = new_policy(qwenimage_path, max_sequence_length=4)
    stock = QwenImagePipeline.from_pretrained(qwenimage_path)
    prompt = ["a red circle and a blue square on a white background"]
    with torch.no_grad():
        embeds, mask = stock.encode_prompt(prompt, device="cpu", max_sequence_length=4)
    ours = policy.encode(prompt, "")
    assert mask is None and embeds.shape[1] == 4  # no padding left to mask
    torch.testing.assert_close(ours["prompt_embeds"], embeds, atol=2e-6, rtol=0)
    assert ours["prompt_embeds_mask"].eq(1).all()


def test_true_guidance_is_the_stock_norm_preserving_combination() -> None:
    """``QwenImagePipeline``'s guidance on packed tokens: ``comb = u + w (c - u)`` rescaled per
    token to ``||c||``; a per-sample scale gives the same bits, rows at or below 1 keep ``c``."""
    gen = torch.Generator().manual_seed(0)
    uncond, cond = torch.randn(3, 4, 6, 8, generator=gen), torch.randn(3, 4, 6, 8, generator=gen)
    out = true_guidance(uncond, cond, 4.0)
    u, c = (QwenImagePipeline._pack_latents(t, 3, 4, 6, 8) for t in (uncond, cond))
    comb = u + 4.0 * (c - u)
    expected = comb * (torch.norm(c, dim=-1, keepdim=True) / torch.norm(comb, dim=-1, keepdim=True))
    theirs = QwenImagePipeline._unpack_latents(expected, 6 * 8, 8 * 8, 8)[:, :, 0]
    torch.testing.assert_close(out, theirs, atol=0, rtol=0)
    tokens = QwenImagePipeline._pack_latents(out, 3, 4, 6, 8)
    torch.testing.assert_close(tokens.norm(dim=-1), c.norm(dim=-1))  # each token keeps |c|
    per_sample = true_guidance(uncond, cond, torch.tensor([4.0, 1.0, 0.5]))
    torch.testing.assert_close(per_sample[0], out[0], atol=0, rtol=0)
    assert torch.equal(per_sample[1:], cond[1:])


def test_the_shifted_schedule_is_the_stock_pipelines(
    qwenimage_policy: Any, qwenimage_path: Path
) -> None:
    """Sigmas ``linspace(1, 1/n, n)`` under the exponential shift of ``mu`` (linear in the
    packed tokens through Qwen-Image's (256, 0.5) and (8192, 0.9)), stretched so that the last
    is ``shift_terminal``; at another size, another ``mu``."""
    scheduler = qwenimage_policy.scheduler
    config = scheduler.config
    assert config.use_dynamic_shifting and config.shift_terminal == 0.02
    for size, tokens in (((64, 64), 16), ((96, 32), 12)):
        mu = calculate_shift(tokens, 256, 8192, 0.5, 0.9)
        assert qwenimage_policy._mu(size) == pytest.approx(mu)
        theirs = type(scheduler).from_config(config)
        theirs.set_timesteps(sigmas=np.linspace(1.0, 1 / 5, 5), mu=mu)
        ours = qwenimage_policy._flow_schedule(type(scheduler).from_config(config), 5, size=size)
        torch.testing.assert_close(ours.sigmas, theirs.sigmas.float(), atol=0, rtol=0)
        assert float(ours.sigmas[-2]) == pytest.approx(0.02)
    # a non-square size samples the stock pipeline's images at that size
    stock = QwenImagePipeline.from_pretrained(qwenimage_path)
    stock.set_progress_bar_config(disable=True)
    theirs_images = stock(PROMPTS, negative_prompt=[""] * 2, true_cfg_scale=4.0, height=96,
                          width=32, num_inference_steps=3, output_type="pt",
                          generator=torch.Generator().manual_seed(3)).images  # fmt: skip
    mine = ode_images(qwenimage_policy, size=(96, 32))
    assert mine.shape == (2, 3, 96, 32)
    torch.testing.assert_close(mine, theirs_images, atol=2e-5, rtol=0)


def test_every_trainable_parameter_gets_a_gradient(qwenimage_path: Path) -> None:
    """The transformer drops the text tokens after its last block: the layers that only update
    them there are frozen (LoRA adapters and full fine-tuning), so that a guided score's
    backward reaches every trainable parameter (DDP needs it), also after the reference
    policy (peft's ``enable_adapters`` makes every adapter trainable again)."""
    for kwargs in ({"lora_targets": "attention_ff"}, {"use_lora": False}):
        policy = new_policy(qwenimage_path, max_sequence_length=TEXT_TOKENS, **kwargs)
        frozen = [n for n, p in policy.transformer.named_parameters() if not p.requires_grad]
        assert any(n.startswith("transformer_blocks.1.txt_mlp.") for n in frozen)
        assert not any(n.startswith("transformer_blocks.0.") for n in frozen if "lora" in n)
        with policy.reference_policy():
            pass
        conditioning = policy.encode(PROMPTS, "")
        x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        velocity = policy.predict(conditioning, x, torch.tensor([700.0, 300.0]), guidance_scale=4.0)
        params = policy.trainable_parameters()
        # an unused parameter fails here; fresh adapters' A gets a zero gradient (B is zero)
        grads = torch.autograd.grad(velocity.square().sum(), list(params.values()))
        zero = [n for n, g in zip(params, grads, strict=True) if not bool(g.abs().sum() > 0)]
        assert not [n for n in zero if ".lora_A." not in n]


def test_attention_ff_adapts_qwenimages_feed_forward_layers(qwenimage_path: Path) -> None:
    policy = new_policy(qwenimage_path, lora_targets="attention_ff")
    assert set(QWENIMAGE_FEED_FORWARD_TARGET_MODULES) <= set(policy.lora_layers)
    names = list(policy.trainable_parameters())
    assert any(".img_mlp.net.0.proj.lora_A" in n for n in names)
    assert any("transformer_blocks.0.txt_mlp.net.2.lora_B" in n for n in names)
    assert not any(".ff." in n or ".ff_context." in n for n in names)


def test_qwenimage_arguments_get_clear_errors_before_model_work(
    qwenimage_path: Path, tmp_path: Path
) -> None:
    for bad in (0, 1025, True):
        with pytest.raises(ValueError, match=rf"max_sequence_length must be an int in \[1, 1024\]"
                                             rf".*max_sequence_length={bad!r}"):  # fmt: skip
            DefaultDDPOQwenImagePipeline(tmp_path / "nowhere", max_sequence_length=bad)
    # 72 = 9 latents: a multiple of the VAE's 8 but not of the 2x2 packing's 16
    with pytest.raises(ValueError, match=r"multiples of 16.*packing.*resolution=\(64, 72\)"):
        DefaultDDPOQwenImagePipeline(qwenimage_path, resolution=(64, 72))


@pytest.mark.parametrize(
    ("component", "changes", "message"),
    [
        ("transformer", {"joint_attention_dim": 48}, r"joint_attention_dim=48 is not the text"),
        ("transformer", {"in_channels": 12}, r"in_channels=12, not 4 x the VAE's z_dim=4"),
        ("transformer", {"out_channels": 8}, r"out_channels=8 is not the VAE's z_dim=4"),
        ("vae", {"latents_std": [1.0]}, r"latents_std must hold z_dim=4 numbers"),
    ],
)
def test_a_folder_whose_parts_disagree_is_refused_naming_them(
    qwenimage_path: Path, tmp_path: Path, component: str, changes: dict[str, Any], message: str
) -> None:
    folder = copy_folder(qwenimage_path, tmp_path, component, **changes)
    with pytest.raises(ValueError, match=message):
        DefaultDDPOQwenImagePipeline(folder)


def test_the_default_resolution_is_the_stock_pipelines(
    qwenimage_path: Path, tmp_path: Path
) -> None:
    """The tiny VAE records its 64 px (a key diffusers ignores); a Qwen-Image VAE without it
    gives the stock pipeline's 128 x the VAE factor, 1024 px."""
    assert new_policy(qwenimage_path).resolution == (64, 64)
    folder = copy_folder(qwenimage_path, tmp_path, "vae", _ddpo_sample_size=None)
    assert new_policy(folder).resolution == (1024, 1024)
