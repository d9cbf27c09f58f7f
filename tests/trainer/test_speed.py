"""The throughput switches (`ddpo.trainer.speed`, `DDPOConfig`'s "Throughput" fields) leave the
math unchanged, on every model family: same trajectories, log-probs and gradients with and
without them, no graph breaks in the sampling and training steps, and the same training run
(and two processes over a compiled denoiser keep identical weights)."""

import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from ddpo import DDPOConfig, DDPOTrainer
from ddpo.adapters import load_policy
from ddpo.policy import Conditioning
from ddpo.trainer.prompt_cache import PromptEmbeddingCache
from ddpo.trainer.speed import HostSyncCounter, SpeedOptions, apply_speed_options

from .graph_breaks_worker import first_transition
from .test_trainer import (
    brightness,
    check_two_process_run,
    launch_two_processes,
    pick_prompt,
    read_metrics,
    tiny_config,
)

MODELS = (
    "ddpo-tiny-random",
    "ddpo-tiny-sdxl-random",
    "ddpo-tiny-sd3-random",
    "ddpo-tiny-flux-random",
)
FAMILIES = pytest.mark.parametrize("model", MODELS, ids=["sd", "sdxl", "sd3", "flux"])
ALL_ON = SpeedOptions(compile_denoiser=True, sample_cuda_graphs=True, channels_last=True)
CPU = torch.device("cpu")


def _policy(model: str) -> Any:
    torch.manual_seed(0)  # the LoRA initialisation draws from the global RNG
    policy = load_policy(model)
    policy.prepare(CPU, gradient_checkpointing=False)
    return policy


def _rollout_and_gradients(policy: Any) -> dict[str, Any]:
    """A 3-step rollout, then the log-prob of its first transition and its gradient."""
    out, rescore = first_transition(policy)
    score = rescore()
    for p in policy.denoiser.parameters():
        p.grad = None
    score.log_prob.sum().backward()
    grads = {n: p.grad.clone() for n, p in policy.denoiser.named_parameters() if p.grad is not None}
    return {
        "latents": out.latents,
        "log_probs": out.log_probs,
        "images": out.images,
        "score": score.log_prob.detach(),
        "grads": grads,
    }


EXPECTED_REGIONS = {
    "sd": "4 blocks of ['BasicTransformerBlock']",
    "sdxl": "4 blocks of ['BasicTransformerBlock']",
    "sd3": "2 blocks of ['JointTransformerBlock']",
    "flux": "2 blocks of ['FluxTransformerBlock', 'FluxSingleTransformerBlock']",
}


@pytest.mark.slow
@FAMILIES
def test_each_family_compiles_its_repeated_blocks(
    model: str, request: pytest.FixtureRequest
) -> None:
    """Which blocks are compiled is the family's (the model's ``_repeated_blocks``, or SD3's
    ``compile_regions``); compiling is lazy, so this costs no compilation. That compiled blocks
    compute what eager ones do is checked once, on SD (the compile checks run on one family)."""
    family = request.node.callspec.id
    policy = _policy(model)
    done = apply_speed_options(policy, SpeedOptions(compile_denoiser=True), CPU)
    assert done == [f"compile_denoiser: {EXPECTED_REGIONS[family]} compiled, mode default"]
    assert [m for m in policy.denoiser.modules() if "forward" in vars(m)]


@pytest.mark.slow
def test_compiled_channels_last_denoiser_gives_the_same_rollout_and_gradients() -> None:
    """SD's UNet under every switch: the same rollout, log-probs, images, re-scored log-prob and
    gradients as eager, to float32 tolerance. Every family's blocks are chosen by
    `test_each_family_compiles_its_repeated_blocks` and trace without graph breaks
    (`test_graph_breaks.py`)."""
    model = MODELS[0]
    torch.set_num_threads(1)
    policy = _policy(model)
    eager = _rollout_and_gradients(policy)
    done = apply_speed_options(policy, ALL_ON, CPU)
    assert any(line.startswith("compile_denoiser:") for line in done), done
    compiled_blocks = [m for m in policy.denoiser.modules() if "forward" in vars(m)]
    assert compiled_blocks, "no block was compiled"
    convs = [p for p in policy.denoiser.parameters() if p.dim() == 4]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    fast = _rollout_and_gradients(policy)

    # float32 tolerance: fused kernels sum in another order (about 1e-5 after three steps)
    torch.testing.assert_close(fast["latents"], eager["latents"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast["log_probs"], eager["log_probs"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast["images"], eager["images"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast["score"], eager["score"], rtol=1e-4, atol=1e-5)
    assert fast["grads"].keys() == eager["grads"].keys() and eager["grads"]
    for name, grad in eager["grads"].items():
        scale = float(grad.abs().max()) + 1e-12
        assert float((fast["grads"][name] - grad).abs().max()) <= 1e-4 * scale, name


@pytest.mark.slow
def test_training_run_is_the_same_with_every_switch(tmp_path: Path) -> None:
    """One epoch with KL through `DDPOTrainer`: the switches on (CUDA graphs falling back on
    CPU) give the same rewards, losses and weights as without them."""
    torch.set_num_threads(1)
    runs = {}
    for name, switches in (
        ("plain", {}),
        (
            "fast",
            {
                "compile_denoiser": True,
                "sample_cuda_graphs": True,
                "channels_last": True,
                "prompt_embedding_cache_size": 3,
            },
        ),
    ):
        # Adam's epsilon at 1e-4 makes each update a smooth function of its gradient (at 1e-8
        # a weight whose gradient is near 0 moves by g / (|g| + 1e-8) x lr: float noise in g
        # becomes a visible fraction of lr).
        config = tiny_config(
            tmp_path / name,
            kl_coef=0.1,
            sample_guidance_scale=5.0,
            train_adam_epsilon=1e-4,
            **switches,
        )
        policy = _policy("ddpo-tiny-random")
        initial = {n: p.detach().clone() for n, p in policy.denoiser.named_parameters()}
        with DDPOTrainer(config, brightness, pick_prompt, policy) as trainer:
            trainer.train()
            lora = {
                n: p.detach().clone() for n, p in policy.denoiser.named_parameters() if "lora" in n
            }
            cache = trainer.rollout.encoder
        runs[name] = (read_metrics(tmp_path / name)[0], lora, cache)

    (plain, plain_lora, _), (fast, fast_lora, cache) = runs["plain"], runs["fast"]
    assert isinstance(cache, PromptEmbeddingCache) and cache.hits + cache.misses == 4
    assert cache.misses == len(cache.rows) <= 3
    for key in ("reward_mean", "reward_std", "loss", "approx_kl", "kl"):
        assert fast[key] == pytest.approx(plain[key], rel=1e-3, abs=1e-5), key
    assert plain_lora.keys() == fast_lora.keys() and plain_lora
    # The update each run made, as one vector: they agree to 0.1 % of its size.
    plain_update = torch.cat([(plain_lora[n] - initial[n]).flatten() for n in plain_lora])
    fast_update = torch.cat([(fast_lora[n] - initial[n]).flatten() for n in plain_lora])
    assert float(plain_update.norm()) > 1e-3  # the epoch trained
    assert float((fast_update - plain_update).norm()) <= 1e-3 * float(plain_update.norm())


@pytest.mark.slow
def test_two_processes_over_a_compiled_denoiser_keep_identical_weights(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """DDP over regionally compiled, channels-last blocks still all-reduces the gradients: the
    two ranks end with identical weights (`test_trainer.py`'s two-process check). It runs after
    this module's compile checks, whose kernels it reuses from inductor's cache."""
    out = tmp_path_factory.mktemp("two-processes-compiled")
    launch_two_processes(out, {"sd-compiled": "ddpo-tiny-random:compiled"})
    check_two_process_run(out / "sd-compiled")


@pytest.mark.slow
def test_prompt_embedding_cache_encodes_each_prompt_once_and_evicts_the_oldest() -> None:
    policy = _policy("ddpo-tiny-random")
    calls: list[list[str]] = []
    encode = policy.encode

    def counting(prompts: list[str], negative: str) -> Conditioning:
        calls.append(list(prompts))
        return encode(prompts, negative)

    policy.encode = counting
    cache = PromptEmbeddingCache(policy, size=2)
    first = cache.encode(["a", "b", "a"], "")
    assert calls == [["a"], ["b"]] and (cache.hits, cache.misses) == (1, 2)
    for name in first.tensors:
        direct = encode(["a", "b", "a"], "")[name]
        torch.testing.assert_close(first[name], direct, rtol=1e-5, atol=1e-6)
    cache.encode(["c"], "")  # evicts "b": "a" was used after it
    assert calls[-1] == ["c"] and list(cache.rows) == [("a", ""), ("c", "")]
    cache.encode(["b"], "")  # encoded again; evicts "a"
    assert calls[-1] == ["b"] and list(cache.rows) == [("c", ""), ("b", "")]
    cache.encode(["a"], "no")  # another negative prompt is another key
    assert calls[-1] == ["a"]
    with pytest.raises(ValueError, match="size must be > 0, got 0"):
        PromptEmbeddingCache(policy, size=0)


def test_host_sync_counter_counts_value_reads_not_host_to_host_copies() -> None:
    x = torch.arange(4.0)
    with HostSyncCounter() as counter:
        x.sum().item()
        bool((x > 2).any())
        x.tolist()
        x.to("cpu")  # already on the host: not a synchronisation
        x.cpu()
        y = x * 2
    assert dict(counter.counts) == {"item": 1, "__bool__": 1, "tolist": 1}
    assert counter.total == 3 and y[1] == 2
    with HostSyncCounter(accelerator_only=True) as on_device:
        x.sum().item()  # a host tensor's value: no device to wait for
    assert on_device.total == 0


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        (
            {"sample_cuda_graphs": True},
            ValueError,
            "sample_cuda_graphs=True needs compile_denoiser=True",
        ),
        ({"compile_denoiser": "yes"}, TypeError, "compile_denoiser must be True or False"),
        ({"channels_last": 1}, TypeError, "channels_last must be True or False"),
        (
            {"prompt_embedding_cache_size": -1},
            ValueError,
            "prompt_embedding_cache_size must be >= 0, got -1",
        ),
        (
            {"prompt_embedding_cache_size": 2.5},
            TypeError,
            "prompt_embedding_cache_size must be an int",
        ),
    ],
)
def test_switches_are_validated(fields: dict[str, Any], error: type, message: str) -> None:
    config = DDPOConfig()
    for name, value in fields.items():
        setattr(config, name, value)
    with pytest.raises(error, match=message):
        config.validate()


def test_cuda_graphs_on_cpu_fall_back_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """No model needed: a module with one repeated block, compiled without graphs on CPU."""

    class Block(torch.nn.Linear):
        pass

    class Holder:
        denoiser = torch.nn.Sequential(Block(2, 2), torch.nn.ReLU(), Block(2, 2))
        compile_regions = ("Block",)

    holder = Holder()
    reference = holder.denoiser(torch.ones(1, 2))
    with caplog.at_level(logging.WARNING, logger="ddpo.trainer.speed"):
        done = apply_speed_options(holder, ALL_ON, CPU)
    assert "needs a CUDA device" in caplog.text
    assert done == [
        "channels_last: 4-D weights in channels-last format",
        "compile_denoiser: 2 blocks of ['Block'] compiled, mode default",
    ]
    torch.testing.assert_close(holder.denoiser(torch.ones(1, 2)), reference)
    with pytest.raises(ValueError, match="no block of \\['Missing'\\]"):
        Holder.compile_regions = ("Missing",)
        apply_speed_options(Holder(), SpeedOptions(compile_denoiser=True), CPU)


@pytest.mark.slow
def test_diffusers_fused_qkv_bypasses_lora_so_it_is_not_a_switch() -> None:
    """Why fused QKV projections are not offered: diffusers' ``fuse_qkv_projections`` copies
    the base weights of ``to_q``/``to_k``/``to_v`` into one ``to_qkv`` layer, and attention then
    calls that layer alone, so the LoRA adapters on the three projections stop acting."""
    policy = _policy("ddpo-tiny-random")
    unet = policy.denoiser
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:  # B starts at zero: give the adapters an effect
                p.normal_(std=0.5)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    embeds = policy.encode(["a red circle"], "")["prompt_embeds"]
    t = torch.tensor([500])
    with torch.no_grad():
        with_lora = unet(latents, t, encoder_hidden_states=embeds).sample
        with policy.reference_policy():
            without_lora = unet(latents, t, encoder_hidden_states=embeds).sample
        unet.fuse_qkv_projections()
        fused = unet(latents, t, encoder_hidden_states=embeds).sample
    assert float((with_lora - without_lora).abs().max()) > 1e-3  # the adapters matter
    assert float((fused - with_lora).abs().max()) > 1e-3  # ... and fusing changes the output


def test_switches_are_command_line_flags(capsys: pytest.CaptureFixture[str]) -> None:
    from ddpo.cli import parse_train_args

    args = parse_train_args(
        [
            "--ddpo_config.compile_denoiser",
            "--ddpo_config.sample_cuda_graphs",
            "--ddpo_config.channels_last",
            "--ddpo_config.prompt_embedding_cache_size",
            "45",
        ]
    )
    config = args.ddpo_config
    assert (config.compile_denoiser, config.sample_cuda_graphs, config.channels_last) == (
        True,
        True,
        True,
    )
    assert config.prompt_embedding_cache_size == 45
    with pytest.raises(SystemExit):
        parse_train_args(["--help"])
    help_text = capsys.readouterr().out
    for flag in ("compile_denoiser", "sample_cuda_graphs", "channels_last", "prompt_embedding"):
        assert f"--ddpo_config.{flag}" in help_text


@pytest.mark.slow
def test_resume_with_every_switch_is_exact(tmp_path: Path) -> None:
    """Two epochs in one run equal one epoch, a checkpoint and a resumed second epoch with the
    switches on: the prompt-embedding cache starts empty after the resume and encodes each
    prompt alone, so its embeddings do not depend on what was cached."""
    from accelerate.state import AcceleratorState, GradientState

    switches: dict[str, Any] = {
        "compile_denoiser": True,
        "channels_last": True,
        "prompt_embedding_cache_size": 3,
        "save_freq": 1,
    }
    torch.set_num_threads(1)

    def run(folder: Path | None, epochs: int, **extra: Any) -> dict[str, torch.Tensor]:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        config = tiny_config(folder, num_epochs=epochs, **switches, **extra)
        with DDPOTrainer(config, brightness, pick_prompt, _policy("ddpo-tiny-random")) as trainer:
            trainer.train()
            return trainer.trainable_state_dict()

    whole = run(tmp_path / "whole", 2)
    run(tmp_path / "split", 1)
    resumed = run(None, 2, resume_from=str(tmp_path / "split"))
    assert whole.keys() == resumed.keys() and whole
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    for key in ("reward_mean", "loss"):
        assert [m[key] for m in read_metrics(tmp_path / "whole")] == [
            m[key] for m in read_metrics(tmp_path / "split")
        ], key
