"""The embedded tiny model and the name registry."""

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from ddpo.adapters import resolve_pretrained
from ddpo.adapters.common.tiny import TINY_WORDS, default_cache_dir
from ddpo.adapters.sd.tiny import (
    TINY_MODEL_NAME,
    TinyModelConfig,
    sd_v1_ddim_scheduler,
    tiny_model_components,
    tiny_pipeline_path,
)


@pytest.mark.slow
def test_components_are_deterministic_per_seed() -> None:
    a, b, c = tiny_model_components(0), tiny_model_components(0), tiny_model_components(1)
    for name in ("unet", "vae", "text_encoder"):
        sa, sb, sc = (x[name].state_dict() for x in (a, b, c))
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
        assert not all(torch.equal(sa[k], sc[k]) for k in sa), name


@pytest.mark.slow
def test_tokenizer_has_the_vocabulary_as_single_tokens() -> None:
    tokenizer = tiny_model_components(0)["tokenizer"]
    for word in ("red", "circle", "cat", "photo", "a"):
        ids = tokenizer(word).input_ids
        assert len(ids) == 3, (word, ids)  # start, word, end
    assert len(tokenizer("a photo of a purple zebra").input_ids) == 2 + 6
    assert tokenizer.model_max_length == 77
    assert "circle" in TINY_WORDS


@pytest.mark.slow
def test_cached_folder_is_stable_diffusion_and_reused(tmp_path: Path) -> None:
    path = tiny_pipeline_path(tmp_path)
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (path / part).is_dir(), part
    assert not list(path.rglob("*.bin")) and not list(path.rglob("*.pt"))  # safetensors only
    weights = path / "unet" / "diffusion_pytorch_model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert tiny_pipeline_path(tmp_path) == path
    assert weights.stat().st_mtime_ns == stamp  # reused, not rebuilt
    # the saved weights are the seeded components
    fresh = tiny_model_components(0)["unet"].state_dict()
    saved = load_file(weights)
    assert set(saved) == set(fresh) and all(torch.equal(saved[k], fresh[k]) for k in saved)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left
    # the saved tokenizer still holds every word as one token
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer")
    assert [w for w in TINY_WORDS if len(tokenizer(w).input_ids) != 3] == []


@pytest.mark.slow
def test_concurrent_builds_give_one_complete_folder(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=3) as pool:
        paths = list(pool.map(lambda _: tiny_pipeline_path(tmp_path), range(3)))
    assert len(set(paths)) == 1
    assert (paths[0] / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [paths[0].name]


def test_cache_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DDPO_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("DDPO_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "ddpo"


@pytest.mark.slow
def test_registry_resolves_the_tiny_name(use_tiny_cache: Path, tiny_path: Path) -> None:
    assert resolve_pretrained(TINY_MODEL_NAME) == tiny_path
    assert resolve_pretrained(str(tiny_path)) == tiny_path.resolve()


def test_registry_reports_a_missing_packaged_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ddpo.models", None)  # makes the import fail
    with pytest.raises(FileNotFoundError, match="packaged model 'ddpo-tiny-shapes' is missing"):
        resolve_pretrained("ddpo-tiny-shapes")


def test_registry_resolves_the_packaged_model_path() -> None:
    from ddpo.models import tiny_shapes_path

    assert resolve_pretrained("ddpo-tiny-shapes") == tiny_shapes_path()


def test_registry_finds_the_packaged_model_without_the_training_scripts() -> None:
    """The registry locates the folder as package data, importing no module that trains it."""
    code = (
        "import json, sys; from ddpo.adapters.common.sources import resolve_pretrained; "
        "resolve_pretrained('ddpo-tiny-shapes'); "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('ddpo.models'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["ddpo.models"]


def test_config_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match=r"image_size must be a positive multiple of 8 .*, got 60"):
        TinyModelConfig(image_size=60)
    with pytest.raises(ValueError, match=r"multiple of 4 .*, got 6"):
        TinyModelConfig(image_size=6, vae_channels=(8, 8, 8))
    with pytest.raises(ValueError, match=r"unet_channels needs at least two levels, got \(32,\)"):
        TinyModelConfig(unet_channels=(32,))
    with pytest.raises(ValueError, match=r"prediction_type must be .* got 'sample'"):
        TinyModelConfig(prediction_type="sample")
    with pytest.raises(ValueError, match="zero_terminal_snr=True needs"):
        TinyModelConfig(zero_terminal_snr=True)


def test_default_scheduler_is_sd_v1_ddim_and_options_reach_it() -> None:
    ddim: Any = sd_v1_ddim_scheduler()
    assert ddim.config.prediction_type == "epsilon" and not ddim.config.rescale_betas_zero_snr
    assert ddim.config.timestep_spacing == "leading" and ddim.config.steps_offset == 1
    v: Any = sd_v1_ddim_scheduler(prediction_type="v_prediction", zero_terminal_snr=True)
    assert v.config.timestep_spacing == "trailing" and float(v.alphas_cumprod[-1]) == 0.0


@pytest.mark.slow
def test_config_options_reach_the_components() -> None:
    config = TinyModelConfig(
        unet_channels=(8, 16, 16),
        vae_channels=(8, 8, 8),
        text_dim=16,
        text_heads=2,
        token_embedding_std=1.0,
        pooled_text_heads=2,
        max_prompt_tokens=16,
        prediction_type="v_prediction",
        zero_terminal_snr=True,
    )
    parts = tiny_model_components(0, config=config)
    unet = parts["unet"]
    assert unet.config.sample_size == 16 and unet.config.addition_embed_type == "text"
    assert unet.config.down_block_types == ("CrossAttnDownBlock2D",) * 2 + ("DownBlock2D",)
    assert parts["vae"].config.block_out_channels == (8, 8, 8)
    text = parts["text_encoder"]
    assert text.config.num_attention_heads == 2 and text.config.projection_dim == 16
    assert 0.5 < float(text.get_input_embeddings().weight.detach().std()) < 1.5
    assert parts["tokenizer"].model_max_length == 16
    assert parts["scheduler"].config.prediction_type == "v_prediction"


def test_top_level_exports() -> None:
    import ddpo
    import ddpo.adapters as adapters
    from ddpo import (
        DDPOPipelineOutput,
        DDPOSchedulerOutput,
        DDPOStableDiffusionPipeline,
        DefaultDDPOStableDiffusionPipeline,
    )

    assert DDPOStableDiffusionPipeline is adapters.DDPOStableDiffusionPipeline
    assert DefaultDDPOStableDiffusionPipeline is adapters.DefaultDDPOStableDiffusionPipeline
    assert DDPOPipelineOutput is adapters.DDPOPipelineOutput
    assert DDPOSchedulerOutput is adapters.DDPOSchedulerOutput
    assert issubclass(DefaultDDPOStableDiffusionPipeline, DDPOStableDiffusionPipeline)
    assert {"DDPOStableDiffusionPipeline", "DefaultDDPOStableDiffusionPipeline"} <= set(dir(ddpo))
    for name in adapters.__all__:
        assert hasattr(adapters, name), name


def test_a_folder_missing_a_listed_component_never_reaches_the_cache(tmp_path: Path) -> None:
    """A saver that skips a component (transformers saving on rank 0 only, in a process group)
    is refused before the rename: the cache never holds the incomplete folder."""
    import json

    from ddpo.adapters.common.tiny import build_pipeline_folder

    def save(components: Any, folder: Path) -> None:
        index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "X"]}
        index["text_encoder"] = ["transformers", "CLIPTextModel"]
        (folder / "model_index.json").write_text(json.dumps(index))
        (folder / "unet").mkdir()
        (folder / "unet" / "config.json").write_text("{}")

    target = tmp_path / "cache" / "model"
    with pytest.raises(RuntimeError, match=r"wrote no files for \['text_encoder'\]"):
        build_pipeline_folder(target, dict, save)
    assert not target.exists() and list((tmp_path / "cache").iterdir()) == []
