"""The abstract interface: a user's own implementation gets working defaults."""

import contextlib
from typing import Any

import pytest
import torch
from peft import LoraConfig

from ddpo.adapters import (
    DDPOPipelineOutput,
    DDPOSchedulerOutput,
    DDPOStableDiffusionPipeline,
    scheduler_step_with_logprob,
)
from ddpo.policy import Conditioning


def test_interface_is_abstract() -> None:
    with pytest.raises(TypeError, match="abstract"):
        DDPOStableDiffusionPipeline()  # type: ignore[abstract]
    abstract = DDPOStableDiffusionPipeline.__abstractmethods__
    # TRL's members that a sampler needs; the rest have working defaults (scheduler_step, the
    # boundary's encode/rollout/score/prepare) or are optional (autocast, TRL's checkpoint hooks,
    # which DDPOTrainer never calls).
    expected = {"__call__", "unet", "vae", "tokenizer", "scheduler", "text_encoder",
                "set_progress_bar_config", "save_pretrained", "get_trainable_layers"}  # fmt: skip
    assert set(abstract) == expected
    for name in ("encode_prompt", "score_transitions", "reference_policy", "scheduler_step",
                 "autocast", "save_checkpoint", "load_checkpoint"):  # fmt: skip
        assert name not in abstract


def test_the_sd_interface_implements_the_policy_boundary() -> None:
    from ddpo.policy import missing_members

    assert missing_members(DDPOStableDiffusionPipeline) == []
    assert missing_members(object()) != []


class MinimalPipeline(DDPOStableDiffusionPipeline):
    """What a user might write around their own components (only the abstract members)."""

    def __init__(self, components: dict[str, Any]) -> None:
        self.parts = components
        self.parts["scheduler"].set_timesteps(4)

    def __call__(self, *args: Any, **kwargs: Any) -> DDPOPipelineOutput:
        raise NotImplementedError

    def scheduler_step(  # type: ignore[no-untyped-def]
        self,
        model_output,
        timestep,
        sample,
        eta=1.0,
        use_clipped_model_output=False,
        prev_sample=None,
        generator=None,
    ):
        out = scheduler_step_with_logprob(
            self.scheduler,
            model_output,
            timestep,
            sample,
            eta=eta,
            prev_sample=prev_sample,
            generator=generator,
        )
        return DDPOSchedulerOutput(out.prev_sample, out.log_prob)

    unet = property(lambda self: self.parts["unet"])  # type: ignore[assignment]
    vae = property(lambda self: self.parts["vae"])  # type: ignore[assignment]
    tokenizer = property(lambda self: self.parts["tokenizer"])  # type: ignore[assignment]
    scheduler = property(lambda self: self.parts["scheduler"])  # type: ignore[assignment]
    text_encoder = property(lambda self: self.parts["text_encoder"])  # type: ignore[assignment]
    autocast = property(lambda self: contextlib.nullcontext)  # type: ignore[assignment]

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        pass

    def save_pretrained(self, output_dir: str) -> None:
        raise NotImplementedError

    def get_trainable_layers(self) -> Any:
        return self.unet

    def save_checkpoint(self, models: list[Any], weights: list[Any], output_dir: str) -> None:
        raise NotImplementedError

    def load_checkpoint(self, models: list[Any], input_dir: str) -> None:
        raise NotImplementedError


@pytest.mark.slow
def test_defaults_work_for_a_user_implementation(lora_pipeline) -> None:  # type: ignore[no-untyped-def]
    from ddpo.adapters.sd.tiny import tiny_model_components

    user = MinimalPipeline(tiny_model_components(0))
    prompts = ["a red circle", "a cat"]
    embeds = user.encode_prompt(prompts)
    torch.testing.assert_close(embeds, lora_pipeline.encode_prompt(prompts), atol=0, rtol=0)
    negative = user.encode_prompt(["", ""])
    gen = torch.Generator().manual_seed(0)
    x_t = torch.randn(2, 4, 8, 8, generator=gen)
    t = user.scheduler.timesteps[1].expand(2)
    drawn = user.scheduler_step(torch.randn(2, 4, 8, 8, generator=gen), t, x_t, eta=1.0)
    scored = user.score_transitions(x_t, drawn.latents, t, embeds, negative,
                                    guidance_scale=4.0, eta=1.0)  # fmt: skip
    lora_pipeline.scheduler.set_timesteps(4)
    with torch.no_grad():
        expected = lora_pipeline.score_transitions(x_t, drawn.latents, t, embeds, negative,
                                                   guidance_scale=4.0, eta=1.0)  # fmt: skip
    # same weights (fresh LoRA is zero), same scheduler: the defaults agree with the pipeline
    torch.testing.assert_close(scored.log_prob, expected.log_prob, atol=1e-6, rtol=0)
    assert scored.log_prob.requires_grad  # gradients flow to the user's UNet
    # the boundary's score from schedule rows [t, t_prev, eta, guidance_scale] is the same
    step = user.scheduler.config.num_train_timesteps // 4
    rows = torch.stack([t, t - step, torch.ones(2), torch.full((2,), 4.0)], dim=1).double()
    conditioning = Conditioning({"prompt_embeds": embeds, "negative_prompt_embeds": negative})
    boundary = user.score(conditioning, x_t, drawn.latents, rows)
    torch.testing.assert_close(boundary.log_prob, scored.log_prob, atol=0, rtol=0)

    with pytest.raises(NotImplementedError, match="no LoRA adapters"), user.reference_policy():
        pass
    user.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v"]))
    with torch.no_grad():
        for name, param in user.unet.named_parameters():
            if "lora_B" in name:
                param.fill_(0.1)
    changed = user.score_transitions(x_t, drawn.latents, t, embeds, guidance_scale=1.0, eta=1.0)
    with user.reference_policy():
        reference = user.score_transitions(x_t, drawn.latents, t, embeds,
                                           guidance_scale=1.0, eta=1.0)  # fmt: skip
    plain = lora_pipeline.score_transitions(x_t, drawn.latents, t, embeds,
                                            guidance_scale=1.0, eta=1.0)  # fmt: skip
    torch.testing.assert_close(reference.log_prob, plain.log_prob, atol=1e-6, rtol=0)
    assert not torch.allclose(changed.log_prob, plain.log_prob, atol=1e-4)
