"""The SDXL side of the model benchmarks: the tiny SDXL preset through the runner, and the
inputs of the bare training loop and of the FLOP count against independent computations."""

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_flops
import bench_training
import presets

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

SMALLEST = ["--steps", "2", "--batch-size", "1", "--repeats", "1", "--warmup", "0"]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("bench-sdxl")
    command = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--preset", "tiny-sdxl"]
    command += ["--device", "cpu", "--only", "sampling,training", "--out", str(out), *SMALLEST]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    names = ("sampling", "training")
    return {name: json.loads((out / f"{name}.json").read_text()) for name in names}


def test_sampling_compares_our_sdxl_pipeline_with_stock_sdxl(
    results: dict[str, dict[str, Any]],
) -> None:
    summary = results["sampling"]["summary"]
    assert summary["ours"] == "DefaultDDPOStableDiffusionXLPipeline"
    assert summary["stock"] == "StableDiffusionXLPipeline"
    assert summary["max_abs_image_diff"] <= 1e-4  # the same images from the same generator
    assert results["sampling"]["settings"]["model"] == "ddpo-tiny-sdxl-random"


def test_training_compares_the_trainers_pass_with_a_bare_loop(
    results: dict[str, dict[str, Any]],
) -> None:
    rows = {row["contender"]: row for row in results["training"]["rows"]}
    assert set(rows) == {"ddpo", "bare"}
    # both do one guided UNet forward/backward: the same dense FLOPs within the PPO extras
    ours, bare = rows["ddpo"]["gflop_per_step"], rows["bare"]["gflop_per_step"]
    assert math.isclose(ours, bare, rel_tol=0.05)
    assert results["training"]["summary"]["trainable_parameters"] > 0


def _tiny_sdxl() -> Any:
    preset = presets.resolve(argparse.Namespace(preset="tiny-sdxl"))
    return preset, presets.load_pipeline(preset, torch.device("cpu"))


def test_bare_loop_conditions_the_unet_as_stock_sdxl_does() -> None:
    _, policy = _tiny_sdxl()
    inputs = bench_training.training_inputs(policy, 2, 4, torch.device("cpu"))
    bare = bench_training.bare_unet_inputs(inputs)
    stock = policy.pipeline
    prompts = presets.prompts(2)
    embeds, negative, pooled, negative_pooled = stock.encode_prompt(
        prompts, device=torch.device("cpu"), do_classifier_free_guidance=True
    )
    torch.testing.assert_close(bare["encoder_hidden_states"], torch.cat([negative, embeds]))
    added = bare["added_cond_kwargs"]
    torch.testing.assert_close(added["text_embeds"], torch.cat([negative_pooled, pooled]))
    side = policy.resolution[0]
    expected_ids = torch.tensor([[side, side, 0, 0, side, side]] * 4, dtype=torch.float32)
    torch.testing.assert_close(added["time_ids"], expected_ids)
    assert torch.equal(bare["sample"][:2], bare["sample"][2:])


def test_meta_flop_count_matches_a_real_call_of_the_tiny_sdxl_unet_and_vae() -> None:
    import harness

    preset, policy = _tiny_sdxl()
    counted = bench_flops.unet_flops(preset, 1)
    unet, vae = policy.pipeline.unet, policy.pipeline.vae
    inputs = bench_training.training_inputs(policy, 1, 4, torch.device("cpu"))
    bare = bench_training.bare_unet_inputs(inputs)
    with torch.no_grad(), policy.reference_policy():  # LoRA adapters off: the base UNet
        real_forward = harness.count_flops(lambda: unet(**bare))
        real_decode = harness.count_flops(lambda: vae.decode(inputs["latents"]))
    assert real_forward == counted["forward"]
    assert real_decode == counted["vae_decode"]
    assert counted["forward_backward"] > counted["forward"]
