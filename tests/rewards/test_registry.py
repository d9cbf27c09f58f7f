"""Rewards by name: every name has a spec, specs build rewards, summary keys are reported."""

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from ddpo.data.shapes import batches
from ddpo.rewards.registry import (
    MODEL_KEYS,
    REWARD_SPECS,
    REWARDS,
    RewardOptions,
    build_reward_fn,
    check_reward_weights,
    parse_reward_spec,
    reward_spec,
    summary_keys_for,
)


def test_every_name_has_one_spec() -> None:
    assert list(REWARD_SPECS) == list(REWARDS)
    assert len(set(REWARDS)) == len(REWARDS)
    with pytest.raises(ValueError, match=r"reward must be one of .* got 'nope'"):
        reward_spec("nope")
    with pytest.raises(ValueError, match="got 'nope'"):
        build_reward_fn("nope")


@pytest.mark.parametrize("name", ["jpeg_compressibility", "jpeg_incompressibility", "brightness"])
def test_cheap_rewards_build_and_score(name: str) -> None:
    fn = build_reward_fn(name, RewardOptions())
    rewards, _ = fn(torch.rand(2, 3, 16, 16), ("a", "b"), ({}, {}))
    assert len(rewards) == 2


def test_summary_keys_are_per_sample_metadata_in_unit_interval() -> None:
    images, captions, metas = next(batches(8, seed=0, split="all"))
    _, info = build_reward_fn("alignment")(images, captions, metas)
    assert reward_spec("alignment").summary_keys == ("accuracy",)
    for key in reward_spec("alignment").summary_keys:
        values = info[key].float()
        assert values.shape == (8,)
        assert bool(((values >= 0) & (values <= 1)).all())


def test_importing_the_registry_imports_no_reward_module() -> None:
    code = (
        "import sys, ddpo.rewards.registry; "
        "print(sorted(m for m in sys.modules if m.startswith(('torch', 'ddpo.rewards.'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['ddpo.rewards.registry']"


# ---------------------------------------------------------------------------------------------
# The model-based names, options and weighted sums


def _recorder(monkeypatch: pytest.MonkeyPatch, module: str, attr: str) -> list[Any]:
    """Replace ``module.attr`` (creating the module if it is not there) by a recorder."""
    import importlib
    import types

    calls: list[Any] = []

    def fake(*args: Any, **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        return lambda images, prompts, metadata: (torch.ones(len(prompts)), {})

    try:
        target = importlib.import_module(module)
    except ImportError:
        target = types.ModuleType(module)
        monkeypatch.setitem(sys.modules, module, target)
    monkeypatch.setattr(target, attr, fake, raising=False)
    return calls


@pytest.mark.parametrize(
    ("name", "module", "attr", "model_key"),
    [
        ("clip_score", "ddpo.rewards.clip_score", "clip_score_reward", "clip_score"),
        ("pickscore", "ddpo.rewards.pickscore", "pickscore_reward", "pickscore"),
        ("hps", "ddpo.rewards.hps", "hps_reward", "hps"),
        ("image_reward", "ddpo.rewards.image_reward", "image_reward", "image_reward"),
    ],
)
def test_model_rewards_get_their_model_device_batch_size_and_token(
    name: str, module: str, attr: str, model_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _recorder(monkeypatch, module, attr)
    build_reward_fn(name, RewardOptions(token="hf_x"))
    assert calls == [((), {"device": None, "batch_size": 32, "token": "hf_x"})]  # defaults
    models = {model_key: "/models/m", "pickscore_processor": "/models/p"}
    models |= {"hps_tokenizer": "/models/ht", "image_reward_tokenizer": "/models/it"}
    options = RewardOptions(models=models, device="cuda:1", batch_size=4)
    build_reward_fn(name, options)
    expected = {"device": "cuda:1", "batch_size": 4, "token": None}
    if name == "pickscore":
        expected["processor"] = "/models/p"
    if name in ("hps", "image_reward"):  # each takes its own tokenizer key
        expected["tokenizer"] = models[f"{name}_tokenizer"]
    assert calls[1] == (("/models/m",), expected)


def test_remote_needs_a_url_and_gets_its_options(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="needs the reward server's URL: set --remote_reward_url"):
        build_reward_fn("remote")
    with pytest.raises(ValueError, match="--remote_reward_url"):
        build_reward_fn("pickscore,remote:0.5")  # checked before pickscore loads
    calls = _recorder(monkeypatch, "ddpo.rewards.remote", "RemoteReward")
    options = RewardOptions(remote_url="http://h:1/score", remote_token="t", remote_timeout=5.0)
    build_reward_fn("remote", options)
    assert calls == [(("http://h:1/score",), {"timeout": 5.0, "token": "t"})]


def test_a_reward_server_is_asked_before_a_reward_model_loads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    order: list[str] = []

    def built(name: str) -> Any:
        def build(*args: Any, **kwargs: Any) -> Any:
            order.append(name)
            return lambda images, prompts, metadata: (torch.ones(len(prompts)), {})

        return build

    monkeypatch.setattr("ddpo.rewards.pickscore.pickscore_reward", built("pickscore"))
    monkeypatch.setattr("ddpo.rewards.remote.RemoteReward", built("remote"))
    fn = build_reward_fn("pickscore,remote:0.5", RewardOptions(remote_url="http://h:1/score"))
    assert order == ["remote", "pickscore"]  # the server first: it checks /health when built
    assert list(fn.rewards) == ["pickscore", "remote"]  # the sum keeps the order written


@pytest.mark.slow
def test_ocr_builds_and_scores() -> None:
    pytest.importorskip("rapidocr")
    fn = build_reward_fn("ocr")
    rewards, metadata = fn(torch.ones(1, 3, 64, 64), ['a blank sign "Hello"'], None)
    assert rewards.tolist() == [0.0] and metadata["ocr_text"] == [""]


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match=r"--reward_model: unknown keys \['ocr'\]"):
        build_reward_fn("brightness", RewardOptions(models={"ocr": "x"}))
    with pytest.raises(ValueError, match="--reward_batch_size must be a positive int, got 0"):
        build_reward_fn("brightness", RewardOptions(batch_size=0))
    with pytest.raises(ValueError, match=r"--remote_reward_timeout must be positive and finite"):
        build_reward_fn("brightness", RewardOptions(remote_timeout=0.0))
    for timeout in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match=rf"--remote_reward_timeout .* got {timeout}"):
            build_reward_fn("brightness", RewardOptions(remote_timeout=timeout))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pickscore", [("pickscore", 1.0)]),
        ("pickscore:1.0,ocr:0.5", [("pickscore", 1.0), ("ocr", 0.5)]),
        (" ocr : 2 , brightness ", [("ocr", 2.0), ("brightness", 1.0)]),
        ("jpeg_compressibility:-1e-1", [("jpeg_compressibility", -0.1)]),
    ],
)
def test_parse_reward_spec(text: str, expected: list[tuple[str, float]]) -> None:
    assert parse_reward_spec(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"--reward must name a reward .* got ''"),
        ("pickscore,,ocr", r"--reward 'pickscore,,ocr': empty term ''"),
        (":2", r"empty term ':2'"),
        ("pickscor:1", r"each reward must be one of \('alignment', .*'remote'\), got 'pickscor'"),
        ("ocr:x", r"the weight of 'ocr' must be a finite number, got 'x'"),
        ("ocr:", r"the weight of 'ocr' must be a finite number, got ''"),
        ("ocr:nan", r"the weight of 'ocr' must be a finite number, got 'nan'"),
        ("ocr:inf", r"got 'inf'"),
        ("ocr,brightness,ocr:2", r"reward 'ocr' is named twice"),
        ("jpeg_compressibility:0", r"the weight of 'jpeg_compressibility' is 0, and a term of"),
        ("pickscore,ocr:0.0", r"weight 0 trains on nothing; drop the term 'ocr:0.0'"),
        ("ocr:-0,brightness:0", r"the weight of 'ocr' is 0"),
    ],
)
def test_parse_reward_spec_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_reward_spec(text)


def test_weighted_sum_is_built_and_summed() -> None:
    from ddpo.rewards.brightness import brightness
    from ddpo.rewards.combine import WeightedSumReward
    from ddpo.rewards.jpeg import jpeg_compressibility

    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    prompts, metas = ("a", "b", "c"), ({}, {}, {})
    fn = build_reward_fn("brightness:2,jpeg_compressibility:0.5")
    assert isinstance(fn, WeightedSumReward)
    total, info = fn(images, prompts, metas)
    bright = torch.as_tensor(brightness(images, prompts, metas)[0]).float()
    jpeg = torch.as_tensor(jpeg_compressibility(images, prompts, metas)[0]).float()
    torch.testing.assert_close(total, 2 * bright + 0.5 * jpeg)
    torch.testing.assert_close(info["brightness"], bright)
    # one term of weight 1 is the plain reward; of another weight, a sum of one term
    plain = build_reward_fn("brightness:1")  # wrapped to score videos frame by frame
    assert plain.reward_fn is brightness  # type: ignore[attr-defined]
    scaled = build_reward_fn("brightness:3")
    torch.testing.assert_close(scaled(images, prompts, metas)[0], 3 * bright)


def test_a_sum_whose_weights_are_all_zero_is_refused() -> None:
    from ddpo.rewards.brightness import brightness
    from ddpo.rewards.combine import WeightedSumReward
    from ddpo.rewards.jpeg import jpeg_compressibility

    with pytest.raises(ValueError, match=r"every weight is 0 .* trains nothing"):
        WeightedSumReward({"brightness": (brightness, 0.0), "jpeg": (jpeg_compressibility, 0)})
    # one zero term beside a non-zero one is reported, not trained on
    images, prompts, metas = torch.rand(2, 3, 16, 16), ("a", "b"), ({}, {})
    total, info = WeightedSumReward(
        {"brightness": (brightness, 2.0), "jpeg": (jpeg_compressibility, 0.0)}
    )(images, prompts, metas)
    torch.testing.assert_close(total, 2 * info["brightness"])
    assert info["jpeg"].abs().min() > 0


def test_summary_keys_for_names_and_sums() -> None:
    assert summary_keys_for("alignment") == ("accuracy",)
    assert summary_keys_for("pickscore") == ()
    assert summary_keys_for("pickscore:1.0,ocr:0.5") == ("pickscore", "ocr")
    assert summary_keys_for("alignment,brightness:0.1") == (
        "alignment",
        "brightness",
        "alignment/accuracy",
    )
    # the sum reports exactly those keys
    images, captions, metas = next(batches(4, seed=0, split="all"))
    _, info = build_reward_fn("alignment,brightness:0.1")(images, captions, metas)
    assert set(summary_keys_for("alignment,brightness:0.1")) <= set(info)
    with pytest.raises(ValueError, match="got 'x'"):
        summary_keys_for("x")


def test_new_names_are_registered() -> None:
    assert {"clip_score", "pickscore", "hps", "image_reward", "ocr", "remote"} <= set(REWARDS)
    assert set(MODEL_KEYS) == {
        "clip_score",
        "pickscore",
        "pickscore_processor",
        "hps",
        "hps_tokenizer",
        "image_reward",
        "image_reward_tokenizer",
        "temporal_consistency",
    }


# ---------------------------------------------------------------------------------------------
# The reward models' files, checked before anything loads


def _offline_with_cache(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    """``HF_HUB_OFFLINE=1`` and ``cache`` as the Hugging Face hub cache (both are read at
    huggingface_hub's import, hence the constant)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))


def _cache_files(cache: Path, repo: str, files: list[str]) -> None:
    """Lay out ``files`` of hub repository ``repo`` as huggingface_hub's cache holds them."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0123abcd")
    snapshot = folder / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for name in files:
        (snapshot / name).write_text("{}")


def test_reward_weights_offline_need_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ddpo.rewards.pickscore import DEFAULT_PICKSCORE_MODEL, DEFAULT_PICKSCORE_PROCESSOR

    _offline_with_cache(monkeypatch, tmp_path / "hub")
    (tmp_path / "hub").mkdir()
    check_reward_weights("brightness,jpeg_compressibility:2,alignment,ocr", RewardOptions())
    with pytest.raises(ValueError) as error:
        check_reward_weights("brightness,pickscore:0.5", RewardOptions())
    message = str(error.value)
    assert message.startswith(f"reward 'pickscore': {DEFAULT_PICKSCORE_MODEL!r} is not a local")
    assert "config.json is not in the Hugging Face cache" in message
    assert str(tmp_path / "hub") in message and "HF_HUB_OFFLINE" in message
    assert message.endswith("pass a local copy with --reward_model pickscore PATH")
    # with the model's files in the cache, the processor is the next one missing
    _cache_files(tmp_path / "hub", DEFAULT_PICKSCORE_MODEL, ["config.json", "model.safetensors"])
    with pytest.raises(ValueError, match=r"--reward_model pickscore_processor PATH$"):
        check_reward_weights("pickscore", RewardOptions())
    _cache_files(tmp_path / "hub", DEFAULT_PICKSCORE_PROCESSOR, ["tokenizer.json"])
    check_reward_weights("pickscore", RewardOptions())


@pytest.mark.parametrize(
    ("reward", "flag"),
    [
        ("clip_score", "--reward_model clip_score PATH"),
        ("aesthetic", "--aesthetic_clip_model PATH"),
        ("hps", "--reward_model hps PATH"),
        ("image_reward", "--reward_model image_reward PATH"),
    ],
)
def test_every_model_reward_is_checked_offline(
    reward: str, flag: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _offline_with_cache(monkeypatch, tmp_path)
    with pytest.raises(ValueError, match=rf"^reward '{reward}': .*{flag}$"):
        check_reward_weights(reward, RewardOptions())


def test_reward_weights_in_local_folders_and_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _offline_with_cache(monkeypatch, tmp_path / "hub")
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "config.json").write_text("{}")
    options = RewardOptions(models={"clip_score": str(clip)})
    with pytest.raises(ValueError, match=r"is a folder without model.safetensors or .*\.bin;"):
        check_reward_weights("clip_score", options)
    (clip / "pytorch_model.bin").write_bytes(b"")
    (clip / "vocab.json").write_text("{}")
    check_reward_weights("clip_score", options)
    # a checkpoint file given directly: ImageReward needs its med_config.json beside it
    checkpoint = tmp_path / "ImageReward.pt"
    checkpoint.write_bytes(b"")
    tokenizer = tmp_path / "bert"
    tokenizer.mkdir()
    (tokenizer / "vocab.txt").write_text("[PAD]")
    models = {"image_reward": str(checkpoint), "image_reward_tokenizer": str(tokenizer)}
    with pytest.raises(ValueError, match=r"has no med_config\.json beside it"):
        check_reward_weights("image_reward", RewardOptions(models=models))
    (tmp_path / "med_config.json").write_text("{}")
    check_reward_weights("image_reward", RewardOptions(models=models))
    # a path that is not there is named as such, not looked up on the hub
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ValueError, match="is no local file or folder"):
        check_reward_weights("hps", RewardOptions(models={"hps": missing}))
