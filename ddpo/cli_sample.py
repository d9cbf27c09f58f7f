"""``ddpo sample``: write images from a (fine-tuned) model folder (parsed by :mod:`ddpo.cli`).

Every family ``ddpo train`` trains samples (`ddpo.adapters.families.FAMILIES`), read from the
folder's ``model_index.json``. Images are written
as PNG files; a video family's samples (``(frames, 3, H, W)`` each) as animated WebP files at
``--fps``, with PIL (`write_sample`).
"""

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "SampleArgs",
    "check_sample_values",
    "draw_samples",
    "load_sampler",
    "run_sample",
    "split_samples",
    "write_sample",
]


@dataclass
class SampleArgs:
    """Write images from a (fine-tuned) model folder (``ddpo sample``): Stable Diffusion 1.x/2.x,
    SDXL, SD3/SD3.5 or FLUX.1, the family read from the folder's ``model_index.json``."""

    model: str
    """Model folder (e.g. ``<output_dir>/final``), built-in name or hub id, of a family read from
    its ``model_index.json`` (the families are listed at the top of this help)."""
    prompt: list[str]
    """One or more prompts."""
    num_images: int = 4
    """Images per prompt."""
    seed: int = 0
    """Seed of the sampling noise."""
    out: str = "samples"
    """Folder the files go to (created if needed): a PNG per image, an animated WebP per
    video."""
    num_inference_steps: int = 10
    """Sampling steps (DDIM steps; flow-ODE or SDE steps for SD3 and FLUX.1)."""
    guidance_scale: float = 5.0
    """Guidance weight, finite and >= 0 (classifier-free guidance; FLUX.1-dev's embedded
    guidance)."""
    eta: float = 1.0
    """DDIM eta (0: deterministic DDIM; 1: the stochastic sampler DDPO trains). For a flow model
    (SD3, FLUX.1): 0 samples the deterministic ODE, anything else its SDE policy."""
    fps: float = 16.0
    """Frames per second of the animated WebP files of a video model (16: Wan2.1's)."""
    verbose: bool = False
    """Show diffusers', transformers' and huggingface_hub's loading progress bars and messages
    (``ddpo sample`` keeps them quiet by default)."""

    def __post_init__(self) -> None:
        # A bad value is reported while the flags are parsed.
        check_sample_values(self)


def check_sample_values(args: SampleArgs) -> None:
    """Check the values of ``args``; cheap, nothing loads.

    Raises:
        ValueError: naming the flag and its value.
    """
    if not args.prompt:
        raise ValueError("prompt: give at least one prompt")
    if args.num_images <= 0:
        raise ValueError(f"num_images must be positive, got {args.num_images}")
    if args.num_inference_steps <= 0:
        raise ValueError(f"num_inference_steps must be positive, got {args.num_inference_steps}")
    if not (math.isfinite(args.guidance_scale) and args.guidance_scale >= 0):
        raise ValueError(
            f"guidance_scale must be a finite number >= 0 (1: no guidance), got "
            f"{args.guidance_scale}"
        )
    if not 0 <= args.eta <= 1:
        raise ValueError(
            f"eta must be in [0, 1] (0: deterministic DDIM, 1: the stochastic sampler DDPO "
            f"trains), got {args.eta}"
        )
    if not 0 < args.fps <= 1000:
        raise ValueError(f"fps must be in (0, 1000] frames per second, got {args.fps}")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "prompt"


def run_sample(args: SampleArgs) -> list[Path]:
    """Run ``ddpo sample``: write ``num_images`` PNGs (or animated WebPs, for a video model) per
    prompt into ``args.out``.

    With ``eta=0`` the images come from the wrapped diffusers pipeline's deterministic DDIM
    (no log-probabilities needed); otherwise from the DDPO pipeline's stochastic sampler.

    Returns:
        The written files, prompt by prompt.

    Raises:
        ValueError: bad arguments (before the model loads).
    """
    return draw_samples(args, load_sampler(args))


def load_sampler(args: SampleArgs) -> Any:
    """Check the arguments, then load the model (its family's DDPO pipeline).

    Everything this raises is a bad flag, path or setting (`ddpo.cli.main` reports it in a line).
    """
    from ddpo.cli_checks import check_writable_folder

    check_sample_values(args)  # again: the fields may have changed since they were parsed
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"out {str(out)!r} is a file, not a folder; choose another --out")
    check_writable_folder(out, flag="--out")
    from ddpo.adapters import load_policy  # diffusers: after the checks

    # the family (SD, SDXL, SD3 or FLUX) from the folder's model_index.json
    return load_policy(args.model, use_lora=True)


def draw_samples(args: SampleArgs, pipeline: Any) -> list[Path]:
    """Draw and write the images of ``args`` with ``pipeline`` (from `load_sampler`)."""
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # eta=0 is deterministic DDIM, which has no log-probabilities (the DDPO pipeline needs
    # eta > 0): the wrapped diffusers pipeline samples it, with the same DDIM scheduler. A flow
    # model (SD3, FLUX) samples its ODE at eta=0 and its SDE policy otherwise; eta is DDIM's only.
    from ddpo.adapters.families import model_family

    flow = bool(model_family(args.model).options)
    sampler = pipeline.pipeline if args.eta == 0 and not flow else pipeline
    stochasticity: dict[str, Any] = {"eta": args.eta}
    if flow:
        stochasticity = {"noise_level": 0} if args.eta == 0 else {}
    written: list[Path] = []
    for index, prompt in enumerate(args.prompt):
        generator = torch.Generator().manual_seed(args.seed + index)
        with torch.no_grad():
            result = sampler(
                prompt=[prompt] * args.num_images,
                num_inference_steps=args.num_inference_steps,
                guidance_scale=args.guidance_scale,
                generator=generator,
                **stochasticity,
                output_type="pil",
            )
        outputs = getattr(result, "images", None)
        if outputs is None:  # diffusers' video pipelines answer with frames
            outputs = result.frames
        for number, sample in enumerate(split_samples(outputs)):
            stem = out / f"{index:02d}_{_slug(prompt)}_{number:03d}"
            written.append(write_sample(sample, stem, fps=args.fps))
    (out / "prompts.json").write_text(json.dumps({"model": args.model, "prompts": args.prompt}))
    return written


def split_samples(outputs: Any) -> list[Any]:
    """A sampler's outputs one sample at a time: a PIL image, an image ``(3, H, W)``, or a video
    (``(frames, 3, H, W)``, or a list of PIL frames).

    Args:
        outputs: a list of PIL images, or of PIL frame lists (one per video); a tensor
            ``(batch, 3, H, W)`` or ``(batch, frames, 3, H, W)``; a numpy array ``(batch, H, W,
            3)`` or ``(batch, frames, H, W, 3)`` (diffusers' ``"np"`` output).

    Raises:
        ValueError: naming the shape, for any other layout.
    """
    import numpy as np
    import torch

    if isinstance(outputs, np.ndarray):
        if outputs.ndim not in (4, 5) or outputs.shape[-1] != 3:
            raise ValueError(
                f"outputs: expected (batch, H, W, 3) or (batch, frames, H, W, 3), got shape "
                f"{outputs.shape}"
            )
        outputs = torch.from_numpy(outputs).movedim(-1, -3)
    if isinstance(outputs, torch.Tensor) and (outputs.ndim not in (4, 5) or outputs.shape[-3] != 3):
        raise ValueError(
            f"outputs: expected (batch, 3, H, W) or (batch, frames, 3, H, W), got shape "
            f"{tuple(outputs.shape)}"
        )
    return list(outputs)


def write_sample(sample: Any, stem: Path, *, fps: float = 16.0) -> Path:
    """Write one sample beside ``stem``: an image as ``<stem>.png``, a video as an animated WebP
    ``<stem>.webp`` at ``fps`` frames per second (PIL; looping).

    Args:
        sample: a PIL image, an image ``(3, H, W)``, or a video ``(frames, 3, H, W)`` (a float
            tensor or array in [0, 1], or uint8) or list of PIL frames.

    Returns:
        The written file.

    Raises:
        ValueError: for another layout.
    """
    from PIL import Image

    from ddpo._animation import save_animation, video_frames

    if isinstance(sample, Image.Image):
        path = stem.with_name(stem.name + ".png")
        sample.save(path)
        return path
    if isinstance(sample, list | tuple) or getattr(sample, "ndim", None) == 4:
        return save_animation(video_frames(sample), stem.with_name(stem.name + ".webp"), fps=fps)
    if getattr(sample, "ndim", None) == 3:
        (image,) = video_frames(sample[None])
        path = stem.with_name(stem.name + ".png")
        image.save(path)
        return path
    raise ValueError(
        f"sample must be a PIL image, an image (3, H, W) or a video (frames, 3, H, W), got "
        f"{type(sample).__name__} of shape {getattr(sample, 'shape', None)}"
    )
