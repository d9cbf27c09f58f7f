"""An accelerate tracker whose ``log_images`` takes PIL images, arrays and tensors alike.

accelerate's trackers disagree on what ``log_images`` takes: ``TensorBoardTracker`` hands each
value straight to ``SummaryWriter.add_images`` (one array or tensor, ``NCHW`` unless told), so the
image hook from TRL's DDPO documentation, which logs lists of PIL images, crashes there with
``NotImplementedError: Got <class 'list'>``; ``WandBTracker`` wants a list of images. The trainer
hands its ``image_samples_hook`` the tracker wrapped by :func:`wrap_tracker`, which normalises
the images for tensorboard and wandb and delegates everything else to the tracker. Its
``log_videos`` logs a video's frames as an animation on both, encoded by PIL (no moviepy).
"""

import io
from collections.abc import Mapping
from typing import Any, final

import numpy as np
import torch
from PIL import Image

from ddpo._animation import encode_animation, video_frames

__all__ = ["ImageTracker", "to_pil_images", "wrap_tracker"]

_CHANNELS = (1, 3, 4)


def wrap_tracker(tracker: Any) -> Any:
    """``tracker`` as an :class:`ImageTracker` (its ``log_images`` takes any image layout).

    None, an already wrapped tracker and a tracker without ``log_images`` (accelerate's blank
    ``GeneralTracker`` off the main process) are returned as they are.
    """
    if tracker is None or isinstance(tracker, ImageTracker) or not hasattr(tracker, "log_images"):
        return tracker
    return ImageTracker(tracker)


@final
class ImageTracker:
    """An accelerate tracker with a ``log_images`` that accepts PIL images, arrays and tensors.

    Every attribute other than ``log_images`` (``log``, ``name``, ``tracker``, ``writer``,
    ``store_init_configuration``, ``finish``, ...) is read from and written to the wrapped
    tracker, which stays reachable as :attr:`unwrapped`.

    ``log_images(values, step=None, **kwargs)`` takes per key a PIL image, a numpy array or a
    torch tensor holding one image or a batch, or a list or tuple mixing these (see
    :func:`to_pil_images`). Every image is logged as RGB (grey expanded, alpha dropped):

    - ``tensorboard``: the images of a key as one ``NHWC`` uint8 batch
      (``writer.add_images(key, batch, global_step=step, dataformats="NHWC")``, which tiles them
      into one picture). Images of different sizes under one key are not resized: each goes
      under its own tag ``key/0``, ``key/1``, ...
    - ``wandb``: one ``run.log({key: [wandb.Image, ...], ...}, step=step, **kwargs)``.
    - any other tracker: the original call, unchanged.

    A ``dataformats`` keyword (e.g. ``"NCHW"``) names the layout of every array and tensor
    instead of inferring it; it is not passed on to wandb.
    """

    unwrapped: Any

    def __init__(self, tracker: Any) -> None:
        object.__setattr__(self, "unwrapped", tracker)

    def __getattr__(self, name: str) -> Any:
        if name == "unwrapped":  # not set yet (copy, pickle): never recurse
            raise AttributeError(name)
        return getattr(self.unwrapped, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.unwrapped, name, value)

    def __repr__(self) -> str:
        return f"ImageTracker({self.unwrapped!r})"

    def log_images(self, values: Mapping[str, Any], step: int | None = None, **kwargs: Any) -> Any:
        """Log ``values`` (key -> image or images) at ``step``; see the class docstring.

        Raises:
            TypeError: if a value is not an image, an image batch or a list of them.
            ValueError: if an array's layout or pixel range is not an image's.
        """
        name = getattr(self.unwrapped, "name", None)
        if name not in ("tensorboard", "wandb"):
            return self.unwrapped.log_images(values, step=step, **kwargs)
        if not isinstance(values, Mapping):
            raise TypeError(f"log_images: values must be a dict, got {type(values).__name__}")
        layout = kwargs.pop("dataformats", None)
        images = {key: to_pil_images(key, value, layout=layout) for key, value in values.items()}
        if name == "tensorboard":
            batches = _tensorboard_batches(images)
            return self.unwrapped.log_images(batches, step=step, dataformats="NHWC", **kwargs)
        import wandb

        logged = {key: [wandb.Image(image) for image in batch] for key, batch in images.items()}
        return self.unwrapped.log(logged, step=step, **kwargs)

    def log_videos(
        self, values: Mapping[str, Any], step: int | None = None, *, fps: float = 16.0
    ) -> Any:
        """Log ``values`` (key -> one video: ``(frames, 3, H, W)`` float in [0, 1] or uint8, or a
        list of PIL frames) at ``step``, each as a looping animated GIF at ``fps``:

        - ``tensorboard``: an image summary holding the GIF (what ``SummaryWriter.add_video``
          writes, there encoded by moviepy; here by PIL), shown animated by the images tab;
        - ``wandb``: ``run.log({key: wandb.Video(gif, format="gif")}, step=step)``;
        - a tracker with its own ``log_videos``: that, with the frames as PIL images;
        - any other tracker: nothing (None).

        Raises:
            TypeError: if ``values`` is not a dict.
            ValueError: if a value is not a video (`ddpo._animation.video_frames`).
        """
        if not isinstance(values, Mapping):
            raise TypeError(f"log_videos: values must be a dict, got {type(values).__name__}")
        frames = {key: video_frames(value) for key, value in values.items()}
        name = getattr(self.unwrapped, "name", None)
        if name == "tensorboard":
            from tensorboard.compat.proto.summary_pb2 import Summary

            writer = self.unwrapped.writer
            for key, video in frames.items():
                gif = encode_animation(video, fps=fps, image_format="GIF")
                width, height = video[0].size
                image = Summary.Image(
                    height=height, width=width, colorspace=3, encoded_image_string=gif
                )
                summary = Summary(value=[Summary.Value(tag=key, image=image)])
                # as SummaryWriter.add_video does, through its (re)opened event file
                writer._get_file_writer().add_summary(summary, step)
            return None
        if name == "wandb":
            import wandb

            logged = {
                key: wandb.Video(
                    io.BytesIO(encode_animation(video, fps=fps, image_format="GIF")),
                    format="gif",
                )
                for key, video in frames.items()
            }
            return self.unwrapped.log(logged, step=step)
        if callable(getattr(self.unwrapped, "log_videos", None)):
            return self.unwrapped.log_videos(frames, step=step, fps=fps)
        return None


def to_pil_images(key: str, value: Any, *, layout: str | None = None) -> list[Image.Image]:
    """The images held by ``value`` as RGB PIL images, in order.

    ``value`` is a PIL image, a numpy array or torch tensor, or a list or tuple of these. An
    array or tensor is one image (``HW``, ``HWC``, ``CHW``) or a batch (``NHWC``, ``NCHW``)
    with 1, 3 or 4 channels; it is uint8, integers in [0, 255], or floats (any dtype, bfloat16
    included, any device) scaled by 255, rounded and clipped to [0, 255] (NaN shows as black).
    Without ``layout`` the channel axis is the one of size 1, 3 or 4, looked for first where
    the type keeps it (first for tensors, last for arrays).

    Args:
        key: the name of the value, for error messages.
        value: the images.
        layout: e.g. ``"NCHW"``, ``"HWC"`` or ``"HW"``: the layout of every array and tensor.

    Raises:
        TypeError: if ``value`` or one of its items is not an image.
        ValueError: if an array's layout or pixel range is not an image's, or there is no image.
    """
    if isinstance(value, Image.Image | np.ndarray | torch.Tensor):
        items: list[Any] = [value]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise TypeError(
            f"log_images: {key!r} must be a PIL image, a numpy array, a torch tensor or a list "
            f"of them, got {type(value).__name__}"
        )
    images: list[Image.Image] = []
    for item in items:
        if isinstance(item, Image.Image):
            images.append(item.convert("RGB"))
        elif isinstance(item, np.ndarray | torch.Tensor):
            arrays = _to_uint8_images(key, item, layout)
            images += [Image.fromarray(array).convert("RGB") for array in arrays]
        else:
            raise TypeError(
                f"log_images: {key!r} holds a {type(item).__name__}; expected PIL images, numpy "
                "arrays or torch tensors"
            )
    if not images:
        raise ValueError(f"log_images: {key!r} holds no images")
    return images


def _to_uint8_images(key: str, item: np.ndarray | torch.Tensor, layout: str | None) -> list[Any]:
    """One array or tensor as a list of uint8 ``HW`` or ``HWC`` (3 or 4 channels) arrays."""
    is_tensor = isinstance(item, torch.Tensor)
    if isinstance(item, torch.Tensor):
        tensor = item.detach().cpu()
        array = (tensor.float() if tensor.is_floating_point() else tensor).numpy()
    else:
        array = item
    shape = tuple(array.shape)

    # 1. pixel values to uint8
    if array.dtype == np.uint8:
        pass
    elif array.dtype == np.bool_ or np.issubdtype(array.dtype, np.floating):
        scaled = np.round(np.nan_to_num(array.astype(np.float32), nan=0.0) * 255)
        array = np.clip(scaled, 0, 255).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError(
                f"log_images: {key!r} has integer pixels in [{array.min()}, {array.max()}]; "
                "expected [0, 255]"
            )
        array = array.astype(np.uint8)
    else:
        raise TypeError(f"log_images: {key!r} holds an array of dtype {array.dtype}, not an image")

    # 2. layout to NHWC
    layout = _infer_layout(key, shape, channels_first=is_tensor) if layout is None else layout
    layout = layout.upper()
    if len(layout) != len(shape) or not set("HW") <= set(layout) <= set("NHWC"):
        raise ValueError(f"log_images: {key!r} of shape {shape} does not fit layout {layout!r}")
    if len(set(layout)) != len(layout):
        raise ValueError(f"log_images: layout {layout!r} repeats an axis")
    if "N" not in layout:
        array, layout = array[None], "N" + layout
    if "C" not in layout:
        array, layout = array[..., None], layout + "C"
    array = array.transpose([layout.index(axis) for axis in "NHWC"])
    if array.shape[-1] not in _CHANNELS:
        raise ValueError(
            f"log_images: {key!r} of shape {shape} has {array.shape[-1]} channels; expected 1, 3 "
            "or 4"
        )
    return [image[..., 0] if image.shape[-1] == 1 else image for image in array]


def _infer_layout(key: str, shape: tuple[int, ...], *, channels_first: bool) -> str:
    if len(shape) == 2:
        return "HW"
    if len(shape) not in (3, 4):
        raise ValueError(
            f"log_images: {key!r} has shape {shape}; expected an image (HW, HWC, CHW) or a batch "
            "(NHWC, NCHW)"
        )
    single = shape[-3:]
    first, last = single[0] in _CHANNELS, single[-1] in _CHANNELS
    if not (first or last):
        raise ValueError(
            f"log_images: {key!r} has shape {shape}; no channel axis of size 1, 3 or 4 (pass "
            "dataformats= to name the layout)"
        )
    batch = "N" if len(shape) == 4 else ""
    chw = (first and channels_first) or not last
    return batch + ("CHW" if chw else "HWC")


def _tensorboard_batches(images: Mapping[str, list[Image.Image]]) -> dict[str, Any]:
    """Per key one ``NHWC`` uint8 batch, or ``key/i`` per image when their sizes differ."""
    batches: dict[str, Any] = {}
    for key, batch in images.items():
        arrays = [np.asarray(image) for image in batch]
        if len({a.shape for a in arrays}) == 1:
            batches[key] = np.stack(arrays)
        else:
            batches.update({f"{key}/{i}": a[None] for i, a in enumerate(arrays)})
    return batches
