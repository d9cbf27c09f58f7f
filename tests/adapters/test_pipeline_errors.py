"""Clear errors, raised before any weights are loaded or any model runs."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from ddpo.adapters import DefaultDDPOStableDiffusionPipeline, resolve_pretrained
from ddpo.adapters.common.args import check_prompts


@pytest.fixture
def no_model_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any attempt to load weights fail loudly, to prove errors come first."""
    from diffusers import StableDiffusionPipeline

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("model weights were loaded before the error")

    monkeypatch.setattr(StableDiffusionPipeline, "from_pretrained", forbidden)


def test_unknown_local_path_is_named(tmp_path: Path, no_model_loading: None) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ValueError, match="no-such-model"):
        DefaultDDPOStableDiffusionPipeline(str(missing))


def test_unknown_hub_id_offline_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_model_loading: None
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ValueError, match="nobody-here/no-such-model"):
        DefaultDDPOStableDiffusionPipeline("nobody-here/no-such-model")


def test_file_instead_of_folder_is_named(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"weights\.bin"):
        resolve_pretrained(path)


def test_folder_without_model_index_is_not_stable_diffusion(
    tmp_path: Path, no_model_loading: None
) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="not a Stable Diffusion model folder"):
        DefaultDDPOStableDiffusionPipeline(tmp_path)


@pytest.mark.slow
def test_non_sd_architecture_names_missing_components(
    tiny_path: Path, tmp_path: Path, no_model_loading: None
) -> None:
    folder = tmp_path / "not-sd"
    shutil.copytree(tiny_path, folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "DDPMPipeline"
    del index["text_encoder"], index["vae"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"DDPMPipeline.*missing components \['vae', 'text_enc"):
        DefaultDDPOStableDiffusionPipeline(folder)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"_class_name": "FlowMatchEulerDiscreteScheduler"}, "FlowMatchEulerDiscreteScheduler"),
        ({"beta_schedule": "exp"}, "beta_schedule='exp'"),
        ({"prediction_type": "flow"}, "prediction_type='flow'"),
    ],
)
def test_scheduler_that_cannot_become_ddim(
    tiny_path: Path, tmp_path: Path, no_model_loading: None, change: dict[str, str], match: str
) -> None:
    folder = tmp_path / "odd-scheduler"
    shutil.copytree(tiny_path, folder)
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config.update(change)
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=match):
        DefaultDDPOStableDiffusionPipeline(folder)


@pytest.mark.slow
def test_pndm_scheduler_is_swapped_for_ddim(tiny_path: Path, tmp_path: Path) -> None:
    """Stable Diffusion checkpoints ship PNDM; the pipeline samples with DDIM of the same betas."""
    from diffusers import DDIMScheduler

    folder = tmp_path / "pndm"
    shutil.copytree(tiny_path, folder)
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config["_class_name"] = "PNDMScheduler"
    config_file.write_text(json.dumps(config))
    pipe = DefaultDDPOStableDiffusionPipeline(folder)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    assert pipe.pipeline.safety_checker is None


@pytest.mark.parametrize("bad", [0, 0.0, -1.0, 1.5])
@pytest.mark.slow
def test_eta_must_be_positive(lora_pipeline, bad: float) -> None:  # type: ignore[no-untyped-def]
    match = r"eta must be in \(0, 1\].*eta=" + str(bad).replace(".", r"\.")
    with pytest.raises(ValueError, match=match):
        lora_pipeline("a red circle", eta=bad, num_inference_steps=2)
    with pytest.raises(ValueError, match="eta"):
        lora_pipeline.score_transitions(
            torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8), torch.tensor([1]),
            torch.zeros(1, 77, 32), guidance_scale=1.0, eta=bad,
        )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("bad", [3, ["a cat", 3], [None], b"a cat", {"a": 1}])
def test_prompts_must_be_strings(lora_pipeline, bad: object) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TypeError, match="prompt must be a string or a list of strings"):
        lora_pipeline(bad, num_inference_steps=2)
    with pytest.raises(TypeError, match="prompts must be"):
        lora_pipeline.encode_prompt(bad)


def test_check_prompts_names_the_bad_items() -> None:
    assert check_prompts("a cat") == ["a cat"]
    assert check_prompts(("a", "b")) == ["a", "b"]
    with pytest.raises(TypeError, match=r"non-string items: \[3\]"):
        check_prompts(["a", 3])
    with pytest.raises(ValueError, match="must not be empty"):
        check_prompts([])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"output_type": "jpeg"}, "output_type"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"height": 60}, r"height must be a positive multiple of 8 .*got height=60"),
        ({"generator": [torch.Generator()] * 3}, "generator list has 3"),
        ({"negative_prompt": ["x", "y", "z"]}, "negative_prompt has 3"),
        ({"latents": torch.zeros(2, 4, 4, 4)}, r"latents must have shape \(2, 4, 8, 8\)"),
    ],
)
def test_bad_call_arguments(lora_pipeline, kwargs: dict[str, object], match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        lora_pipeline(["a", "b"], **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"lora_rank": 0}, "lora_rank"), ({"lora_alpha": -1.0}, "lora_alpha"),
     ({"torch_dtype": torch.int8}, "torch_dtype")],
)  # fmt: skip
def test_bad_constructor_arguments(
    kwargs: dict[str, object], match: str, no_model_loading: None
) -> None:
    with pytest.raises(ValueError, match=match):
        DefaultDDPOStableDiffusionPipeline("ddpo-tiny-random", **kwargs)  # type: ignore[arg-type]


def _sd_folder(root: Path) -> Path:
    """A folder whose model_index.json lists the SD components (no weights: nothing loads)."""
    index = {"_class_name": "StableDiffusionPipeline"}
    index |= {name: ["diffusers", "X"] for name in ("unet", "vae", "scheduler")}
    index |= {name: ["transformers", "X"] for name in ("text_encoder", "tokenizer")}
    root.mkdir()
    (root / "model_index.json").write_text(json.dumps(index))
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text('{"_class_name": "DDIMScheduler"}')
    return root


@pytest.mark.parametrize(
    ("relative", "garbage"),
    [
        ("model_index.json", '{"_class_name": "StableDiffusionPipeline", "unet": ['),
        ("model_index.json", b"\xff\xfe\x00garbage"),
        ("scheduler/scheduler_config.json", "not json at all"),
    ],
)
def test_corrupt_json_names_the_file(
    tmp_path: Path, no_model_loading: None, relative: str, garbage: str | bytes
) -> None:
    folder = _sd_folder(tmp_path / "model")
    damaged = folder / relative
    if isinstance(garbage, bytes):
        damaged.write_bytes(garbage)
    else:
        damaged.write_text(garbage)
    with pytest.raises(ValueError, match="is not valid JSON") as info:
        DefaultDDPOStableDiffusionPipeline(folder)
    assert str(damaged) in str(info.value)


def test_model_index_must_be_a_json_object(tmp_path: Path, no_model_loading: None) -> None:
    folder = _sd_folder(tmp_path / "model")
    (folder / "model_index.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"model_index\.json must hold a JSON object, got list"):
        DefaultDDPOStableDiffusionPipeline(folder)


def test_corrupt_model_index_via_the_cli_is_one_line(
    tmp_path: Path, no_model_loading: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from ddpo.cli import main

    folder = _sd_folder(tmp_path / "model")
    (folder / "model_index.json").write_text("{truncated")
    capsys.readouterr()
    assert main(["sample", "--model", str(folder), "--prompt", "a red circle"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("ddpo: ") and err.count("\n") == 1, err
    assert f"{folder / 'model_index.json'} is not valid JSON" in err
    assert main(["train", f"--pretrained_model={folder}"]) == 2
    assert f"{folder / 'model_index.json'} is not valid JSON" in capsys.readouterr().err
