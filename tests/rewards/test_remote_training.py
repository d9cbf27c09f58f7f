"""DDPOTrainer on the tiny model with its reward computed by a ``ddpo serve-reward`` process."""

import json
import os
import queue
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from ddpo import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline
from ddpo.rewards.remote import RemoteReward

PROMPTS = ("a red circle", "a blue square", "a green star")

pytestmark = pytest.mark.slow


def pick_prompt() -> tuple[str, dict[str, Any]]:
    prompt = random.choice(PROMPTS)
    return prompt, {"index": PROMPTS.index(prompt)}


@pytest.fixture(autouse=True)
def _one_thread_and_fresh_accelerate_state() -> Iterator[None]:
    """As tests/trainer/conftest.py: one intra-op thread, accelerate's singletons reset after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture
def brightness_url() -> Iterator[str]:
    """A ``ddpo serve-reward --reward brightness --port 0`` process; its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ddpo", "serve-reward", "--reward", "brightness", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=120)
        assert "http://" in line, line
        yield line.split()[-1]
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def test_one_epoch_with_a_remote_reward_and_async_rewards(
    tmp_path: Path, brightness_url: str
) -> None:
    config = DDPOConfig(
        num_epochs=1,
        sample_num_steps=2,
        sample_batch_size=2,
        sample_num_batches_per_epoch=2,
        train_batch_size=2,
        train_timestep_fraction=0.5,
        train_learning_rate=1e-3,
        save_freq=0,
        mixed_precision="no",
        output_dir=str(tmp_path / "run"),
        accelerator_kwargs={"cpu": True},
        async_reward_computation=True,
    )
    torch.manual_seed(0)
    pipeline = DefaultDDPOStableDiffusionPipeline("ddpo-tiny-random")
    hook_calls: list[list[list[Any]]] = []
    with RemoteReward(brightness_url, batch_size=1) as remote:
        trainer = DDPOTrainer(
            config, remote, pick_prompt, pipeline, lambda data, *_: hook_calls.append(data)
        )
        before = trainer.trainable_state_dict()
        assert trainer.train() == 2
        trainer.close()
    after = trainer.trainable_state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained

    ((*batches,),) = hook_calls
    assert len(batches) == 2
    seen = []
    for images, prompts, _, rewards, reward_metadata in batches:
        assert images.shape == (2, 3, 64, 64) and all(p in PROMPTS for p in prompts)
        # The server scored exactly these float32 images (safetensors): the pixel mean, written
        # out here, to float32 rounding of the summation order.
        expected = images.double().sum(dim=(1, 2, 3)) / (3 * 64 * 64)
        torch.testing.assert_close(rewards.double(), expected, rtol=0, atol=1e-6)
        assert reward_metadata == {}
        seen.append(rewards)
    (metrics,) = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert metrics["reward_mean"] == pytest.approx(float(torch.cat(seen).mean()))
