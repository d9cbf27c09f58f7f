"""Pretrained tiny models shipped with the package.

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

__all__ = ["tiny_shapes_path"]

_TINY_SHAPES = "ddpo-tiny-shapes"


def tiny_shapes_path() -> Path:
    """Folder of the packaged ``ddpo-tiny-shapes`` pipeline (loadable with diffusers offline).

    Example::

        from diffusers import StableDiffusionPipeline
        pipe = StableDiffusionPipeline.from_pretrained(tiny_shapes_path())

    Raises:
        FileNotFoundError: if the weights are missing from this installation.
    """
    path = Path(__file__).resolve().parent / _TINY_SHAPES
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"the packaged model folder is missing or incomplete: {path}")
    return path
