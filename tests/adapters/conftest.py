"""Shared tiny pipelines for the adapter tests (built once per session, never downloaded)."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# The test machines have 2 cores shared by several processes; intra-op threads of these tiny
# models only contend with each other, so one thread is several times faster here.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_path(tiny_cache: Path) -> Path:
    """Folder of the random tiny Stable Diffusion model (``save_pretrained`` layout)."""
    from ddpo.adapters.sd.tiny import tiny_pipeline_path

    return tiny_pipeline_path(tiny_cache)


@pytest.fixture(scope="session")
def sd3_path(tiny_cache: Path) -> Path:
    """The built-in random tiny SD3 model (seed 0) in the session's shared cache: read only."""
    from ddpo.adapters.sd3.tiny import tiny_sd3_path

    return tiny_sd3_path(tiny_cache)


@pytest.fixture(scope="session")
def sdxl_path(tiny_cache: Path) -> Path:
    """The built-in random tiny SDXL model (seed 0), as ``sd3_path``."""
    from ddpo.adapters.sdxl.tiny import tiny_sdxl_path

    return tiny_sdxl_path(tiny_cache)


@pytest.fixture(scope="session")
def flux_path(tiny_cache: Path) -> Path:
    """The built-in random tiny FLUX.1-dev model (seed 0), as ``sd3_path``."""
    from ddpo.adapters.flux.tiny import tiny_flux_path

    return tiny_flux_path(tiny_cache)


@pytest.fixture(scope="session")
def qwenimage_path(tiny_cache: Path) -> Path:
    """The built-in random tiny Qwen-Image model (seed 0), as ``sd3_path``."""
    from ddpo.adapters.qwenimage.tiny import tiny_qwenimage_path

    return tiny_qwenimage_path(tiny_cache)


@pytest.fixture(scope="session")
def wan_path(tiny_cache: Path) -> Path:
    """The built-in random tiny Wan2.1 text-to-video model (seed 0), as ``sd3_path``."""
    from ddpo.adapters.wan.tiny import tiny_wan_path

    return tiny_wan_path(tiny_cache)


@pytest.fixture(scope="session")
def sdxl_policy(sdxl_path: Path):  # type: ignore[no-untyped-def]
    """The tiny SDXL policy with fresh LoRA adapters (shared: tests must not change weights,
    and restore what they set, e.g. ``eta``)."""
    from ddpo.adapters import DefaultDDPOStableDiffusionXLPipeline

    pipe = DefaultDDPOStableDiffusionXLPipeline(sdxl_path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def sd3_policy(sd3_path: Path):  # type: ignore[no-untyped-def]
    """The tiny SD3 policy with fresh LoRA adapters (shared, as ``sdxl_policy``)."""
    from ddpo.adapters import DefaultDDPOStableDiffusion3Pipeline

    pipe = DefaultDDPOStableDiffusion3Pipeline(sd3_path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def flux_policy(flux_path: Path):  # type: ignore[no-untyped-def]
    """The tiny FLUX.1-dev policy with fresh LoRA adapters (shared, as ``sdxl_policy``)."""
    from ddpo.adapters import DefaultDDPOFluxPipeline

    pipe = DefaultDDPOFluxPipeline(flux_path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def qwenimage_policy(qwenimage_path: Path):  # type: ignore[no-untyped-def]
    """The tiny Qwen-Image policy with fresh LoRA adapters (shared, as ``sdxl_policy``)."""
    from ddpo.adapters import DefaultDDPOQwenImagePipeline

    pipe = DefaultDDPOQwenImagePipeline(qwenimage_path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def wan_policy(wan_path: Path):  # type: ignore[no-untyped-def]
    """The tiny Wan2.1 policy with fresh LoRA adapters (shared, as ``sdxl_policy``)."""
    from ddpo.adapters import DefaultDDPOWanPipeline

    pipe = DefaultDDPOWanPipeline(wan_path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def use_tiny_cache(tiny_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point ``DDPO_CACHE_DIR`` at the session's cache (for tests that resolve names)."""
    monkeypatch.setenv("DDPO_CACHE_DIR", str(tiny_cache))
    yield tiny_cache


@pytest.fixture(scope="session")
def lora_pipeline(tiny_path: Path):  # type: ignore[no-untyped-def]
    """The default pipeline with fresh LoRA adapters (shared: tests must not change weights)."""
    from ddpo.adapters import DefaultDDPOStableDiffusionPipeline

    pipe = DefaultDDPOStableDiffusionPipeline(tiny_path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def full_pipeline(tiny_path: Path):  # type: ignore[no-untyped-def]
    """The default pipeline training the full UNet (shared: tests must not change weights)."""
    from ddpo.adapters import DefaultDDPOStableDiffusionPipeline

    pipe = DefaultDDPOStableDiffusionPipeline(tiny_path, use_lora=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def perturb_trainable(pipe, seed: int = 1, scale: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    """Give every trainable parameter a seeded random offset (a stand-in for fine-tuning)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(pipe.trainable_parameters().items()):
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
            param.add_((scale * noise).to(param.dtype))


@pytest.fixture(scope="session")
def tuned_lora_pipeline(tiny_path: Path):  # type: ignore[no-untyped-def]
    """A LoRA pipeline whose adapters were changed (so saved LoRA weights matter)."""
    from ddpo.adapters import DefaultDDPOStableDiffusionPipeline

    pipe = DefaultDDPOStableDiffusionPipeline(tiny_path, lora_rank=4, lora_alpha=8)
    pipe.set_progress_bar_config(disable=True)
    perturb_trainable(pipe, seed=1, scale=0.1)
    return pipe


@pytest.fixture(scope="session")
def perturb():  # type: ignore[no-untyped-def]
    """The :func:`perturb_trainable` helper, for tests that build their own pipelines."""
    return perturb_trainable
