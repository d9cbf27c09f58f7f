"""Pretrained tiny models shipped with the package.

``ddpo-tiny-shapes-flow``: an ~8 MB Stable Diffusion 3 (MMDiT ``SD3Transformer2DModel``, two CLIP
encoders and a T5 encoder, flow matching) trained on the same data by
:mod:`ddpo.models.train_tiny_shapes_flow`, with the first model's VAE.

``ddpo-tiny-shapes``: a ~6 MB Stable Diffusion (AutoencoderKL, UNet2DConditionModel,
CLIPTextModel, CLIP tokenizer, DDIM scheduler) trained on :mod:`ddpo.data.shapes` by
:mod:`ddpo.models.train_tiny_shapes`. It draws 64x64 images of a coloured shape on a plain
background from captions such as ``"a red circle on the left on a blue background"``.

This package is data to the runtime: :func:`ddpo.adapters.resolve_pretrained` finds the folder
with :mod:`importlib.resources`, so this module imports nothing of ``ddpo``, and the
scripts beside it (which import the adapters to build and train the model) are never imported by
the library.
"""

from pathlib import Path

__all__ = ["tiny_shapes_flow_path", "tiny_shapes_path"]

_TINY_SHAPES = "ddpo-tiny-shapes"
_TINY_SHAPES_FLOW = "ddpo-tiny-shapes-flow"


def tiny_shapes_path() -> Path:
    """Folder of the packaged ``ddpo-tiny-shapes`` pipeline (loadable with diffusers offline).

    Example::

        from diffusers import StableDiffusionPipeline
        pipe = StableDiffusionPipeline.from_pretrained(tiny_shapes_path())

    Raises:
        FileNotFoundError: if the weights are missing from this installation.
    """
    return _packaged(_TINY_SHAPES)


def tiny_shapes_flow_path() -> Path:
    """Folder of the packaged ``ddpo-tiny-shapes-flow`` pipeline (``StableDiffusion3Pipeline``).

    Example::

        from diffusers import StableDiffusion3Pipeline
        pipe = StableDiffusion3Pipeline.from_pretrained(tiny_shapes_flow_path())
        image = pipe("a red circle", max_sequence_length=16).images[0]  # its T5 length

    Raises:
        FileNotFoundError: if the weights are missing from this installation.
    """
    return _packaged(_TINY_SHAPES_FLOW)


def _packaged(name: str) -> Path:
    path = Path(__file__).resolve().parent / name
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"the packaged model folder is missing or incomplete: {path}")
    return path
