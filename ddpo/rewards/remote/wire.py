"""The wire format of a remote reward: what `RemoteReward` and the reward server exchange.

Version 1 (``"format": 1``), over HTTP, JSON bodies. A reward function of the reward contract
(:mod:`ddpo.rewards.contract`) runs on the server; each batch is one request.

``POST <url>/score`` scores a batch; the body (`encode_request`, `decode_request`)::

    {"format": 1,
     "image_format": "safetensors" | "png",
     "images": <base64 safetensors blob> | [<base64 PNG>, ...],
     "prompts": [str, ...] | null,
     "prompt_metadata": <any JSON value>}

- ``safetensors`` (the default): one tensor ``"images"``, float32 ``(batch, 3, H, W)`` in [0, 1],
  exactly the images the trainer produced, so a remote reward equals the same reward computed
  locally and a run does not change when its reward moves to a server. It is 4 bytes a
  sub-pixel (plus a third for base64); use ``png`` where bandwidth matters more.
- ``png``: one RGB PNG per image. The client rounds to 8 bits (``round(255 x)``) and the server
  scores that 8-bit image as floats ``k / 255``, so rewards match local ones up to 8-bit
  rounding.

A JSON body with base64 (rather than multipart) needs no form parser on the server, is one
self-describing document any HTTP client can write, and lets the server count the bytes it
receives before parsing anything; base64 costs a third more bytes. Nothing is ever pickled:
safetensors and PNG carry only numbers, JSON only data.

The answer (`encode_answer`, `decode_answer`) is ``{"format": 1, "rewards": [float, ...],
"reward_metadata": {...}}``, with tensors and arrays in the metadata written as (nested) lists
(`to_json_data`). An error is an HTTP status with ``{"error": "<message>"}``:

- 400 a malformed request, named in the message: not JSON (or nested too deeply), another
  wire format, images that are not base64 PNG or a float32 ``(batch, 3, H, W)`` safetensors
  tensor, an empty batch or an image with no pixels, float images holding NaN, infinities or
  values outside [0, 1] (named by image index; 8-bit PNGs decode to ``k / 255``, always in
  range), prompts that are not one str per image (`WireFormatError`);
- 401 a missing or wrong ``Authorization: Bearer <token>``, when the server has a token (both
  sides read it from ``$DDPO_REWARD_TOKEN``, `TOKEN_ENV`, when none is passed);
- 413 a body over the server's byte limit, or images over its pixel limits: more than
  ``max_image_pixels`` in one image, or more than ``max_request_bytes // 12`` in the request
  (the decoded float32 RGB images are never larger than the largest body;
  `ImageTooLargeError`);
- 500 the reward raised or broke the reward contract (the message is the exception's text).

``GET <url>/health`` answers ``{"status": "ok", "reward": <name>, "format": 1,
"max_request_bytes": N, "max_image_pixels": N, "max_request_pixels": N, "token_required":
bool}``. It needs no token and tells nothing but the reward's name and the limits; a request
that sends ``Authorization`` has it checked as ``/score`` would (401 if wrong), so a client
checks its server, wire format and token before its first batch (`RemoteReward.check`).
"""

import base64
import binascii
import importlib
import io
import json
import struct
from typing import Any, Literal, get_args

import numpy as np
import torch
from jaxtyping import Float

from ddpo.rewards._images import to_float_nchw, to_uint8_nhwc

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DEFAULT_MAX_REQUEST_BYTES",
    "IMAGE_FORMATS",
    "TOKEN_ENV",
    "WIRE_FORMAT",
    "ImageFormat",
    "ImageTooLargeError",
    "WireFormatError",
    "decode_answer",
    "decode_request",
    "encode_answer",
    "encode_request",
    "to_json_data",
]

WIRE_FORMAT = 1
ImageFormat = Literal["safetensors", "png"]
IMAGE_FORMATS: tuple[ImageFormat, ...] = get_args(ImageFormat)
"""The ``image_format`` values."""
TOKEN_ENV = "DDPO_REWARD_TOKEN"
"""Environment variable holding the bearer token (server and client) when none is passed."""
DEFAULT_MAX_REQUEST_BYTES = 256 * 2**20
"""256 MiB: a batch of 16 512x512 images as float32 safetensors (base64) is about 67 MiB."""
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096
"""Pixels of the largest image accepted: 4096x4096 (a 1024x1024 image is 1/16 of it); below
PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``, about 89 million)."""
FLOAT32_RGB_BYTES = 12
"""Bytes of one decoded pixel (3 float32): ``max_request_pixels = max_request_bytes // 12``."""


class WireFormatError(ValueError):
    """A request body that does not follow the wire format (the server answers 400)."""


class ImageTooLargeError(WireFormatError):
    """Images over the server's pixel limits (the server answers 413)."""


def to_json_data(value: Any, path: str) -> Any:
    """``value`` as JSON data: tensors and arrays become (nested) lists, tuples lists.

    Raises:
        TypeError: naming the first offending entry (``path`` spells where ``value`` is), if a
            value is not JSON data (dict keys must be str).
    """
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, list | tuple):
        return [to_json_data(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{path} has a key {key!r} that is not a str; JSON keys are str")
            out[key] = to_json_data(item, f"{path}[{key!r}]")
        return out
    raise TypeError(
        f"{path} is of type {type(value).__name__} ({value!r:.80}), which is not JSON data; use "
        f"dicts, lists, str, numbers, None (tensors and arrays are sent as lists)"
    )


def encode_request(
    images: Float[torch.Tensor, "batch 3 height width"],
    prompts: list[str] | None,
    prompt_metadata: Any,
    *,
    image_format: ImageFormat = "safetensors",
) -> bytes:
    """The JSON body of one ``POST /score`` (see the module docstring).

    Raises:
        TypeError: if ``prompt_metadata`` is not JSON data (naming the offending entry).
    """
    metadata = to_json_data(prompt_metadata, "prompt_metadata")
    if image_format == "safetensors":
        import safetensors.torch

        blob = safetensors.torch.save({"images": images.detach().float().cpu().contiguous()})
        encoded = b'"' + base64.b64encode(blob) + b'"'
    else:
        from PIL import Image

        parts = []
        for array in to_uint8_nhwc(images):
            buffer = io.BytesIO()
            Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
            parts.append(b'"' + base64.b64encode(buffer.getvalue()) + b'"')
        encoded = b"[" + b", ".join(parts) + b"]"
    head = {
        "format": WIRE_FORMAT,
        "image_format": image_format,
        "prompts": prompts,
        "prompt_metadata": metadata,
    }
    # Base64 needs no escaping in JSON: the images are spliced in rather than passed through
    # json.dumps, which would scan (and copy) tens of MiB of text for nothing.
    return json.dumps(head).encode()[:-1] + b', "images": ' + encoded + b"}"


def decode_request(
    body: bytes,
    *,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_request_pixels: int = DEFAULT_MAX_REQUEST_BYTES // FLOAT32_RGB_BYTES,
) -> tuple[Float[torch.Tensor, "batch 3 height width"], list[str] | None, Any]:
    """``(images, prompts, prompt_metadata)`` from a request body; images float32 in [0, 1].

    The image sizes are read from the PNG or safetensors headers and checked against the
    limits before any image is decoded; float images are checked to be finite and in [0, 1].

    Args:
        body: The request body (see the module docstring).
        max_image_pixels: Most pixels (``H * W``) of one image.
        max_request_pixels: Most pixels of all the images together.

    Raises:
        ImageTooLargeError: naming the limit and the size, if images are over a limit.
        WireFormatError: naming what is wrong with the body.
    """
    try:
        request = json.loads(body)
    except RecursionError:
        raise WireFormatError("the request body is JSON nested too deeply") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, an int of 5000 digits
        raise WireFormatError(f"the request body is not JSON: {err}") from None
    if not isinstance(request, dict):
        raise WireFormatError(
            f"the request body must be a JSON object, got {type(request).__name__}"
        )
    if type(request.get("format")) is not int or request.get("format") != WIRE_FORMAT:
        raise WireFormatError(
            f"format must be {WIRE_FORMAT} (this server's wire format), got "
            f"{request.get('format')!r}"
        )
    image_format = request.get("image_format")
    if not isinstance(image_format, str) or image_format not in IMAGE_FORMATS:
        raise WireFormatError(
            f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r:.200}"
        )
    limits = _Limits(max_image_pixels, max_request_pixels)
    if image_format == "safetensors":
        images = _decode_safetensors(request.get("images"), limits)
    else:
        images = _decode_pngs(request.get("images"), limits)
    prompts = request.get("prompts")
    if prompts is not None and not (
        isinstance(prompts, list) and all(isinstance(p, str) for p in prompts)
    ):
        raise WireFormatError(f"prompts must be a list of str or null, got {prompts!r:.200}")
    if prompts is not None and len(prompts) != images.shape[0]:
        raise WireFormatError(f"{len(prompts)} prompts for {images.shape[0]} images")
    return images, prompts, request.get("prompt_metadata")


def _b64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise WireFormatError(f"{what} must be a base64 string, got {type(text).__name__}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:  # ValueError: a non-ASCII character
        raise WireFormatError(f"{what} is not valid base64: {err}") from None


class _Limits:
    """The pixel limits of one request, counting the pixels of its images as they are seen."""

    def __init__(self, max_image_pixels: int, max_request_pixels: int) -> None:
        self.max_image_pixels, self.max_request_pixels = max_image_pixels, max_request_pixels
        self.total = 0

    def add(self, what: str, height: int, width: int, count: int = 1) -> None:
        """Count ``count`` images of ``height x width``; ImageTooLargeError over a limit."""
        if height == 0 or width == 0:
            raise WireFormatError(f"{what} has no pixels: {width}x{height} (width x height)")
        pixels = height * width
        if pixels > self.max_image_pixels:
            raise ImageTooLargeError(
                f"{what} is {width}x{height} = {pixels} pixels, over this server's limit of "
                f"{self.max_image_pixels} pixels per image (--max_image_pixels)"
            )
        self.total += count * pixels
        if self.total > self.max_request_pixels:
            raise ImageTooLargeError(
                f"the images of this request hold at least {self.total} pixels, over this "
                f"server's limit of {self.max_request_pixels} pixels per request (their float32 "
                f"size within --max_request_mb); send fewer images per request"
            )


def _decode_safetensors(
    images: Any, limits: _Limits
) -> Float[torch.Tensor, "batch 3 height width"]:
    import safetensors.torch

    blob = _b64(images, "images")
    batch, height, width = _safetensors_shape(blob)
    limits.add("each image" if batch > 1 else "images[0]", height, width, count=batch)
    try:
        tensor = safetensors.torch.load(blob)["images"]
    except Exception as err:  # safetensors raises its own error types for a bad blob
        raise WireFormatError(f"images is not a safetensors blob: {err}") from None
    _check_values(tensor)
    return tensor


def _safetensors_shape(blob: bytes) -> tuple[int, int, int]:
    """``(batch, H, W)`` of the float32 tensor ``"images"`` from a safetensors header (a
    little-endian u64 length, then that many bytes of JSON), without reading the data."""
    bad_blob = "images is not a safetensors blob"
    if len(blob) < 8:
        raise WireFormatError(f"{bad_blob}: {len(blob)} bytes, shorter than its header length")
    size = int.from_bytes(blob[:8], "little")
    if size > len(blob) - 8:
        raise WireFormatError(f"{bad_blob}: a header of {size} bytes in {len(blob)} bytes")
    try:
        header = json.loads(blob[8 : 8 + size])
    except (ValueError, RecursionError) as err:
        raise WireFormatError(f"{bad_blob}: its header is not JSON: {err}") from None
    entry = header.get("images") if isinstance(header, dict) else None
    if not isinstance(entry, dict):
        raise WireFormatError("images must hold a float32 tensor named 'images'")
    dtype, shape = entry.get("dtype"), entry.get("shape")
    if dtype != "F32":
        raise WireFormatError(f"images must hold a float32 tensor, got dtype {dtype!r:.50}")
    if not (
        isinstance(shape, list)
        and len(shape) == 4
        and all(type(n) is int and n >= 0 for n in shape)
        and shape[1] == 3
    ):
        raise WireFormatError(f"images must be (batch, 3, H, W), got shape {shape!r:.100}")
    if shape[0] == 0:
        raise WireFormatError(f"images is an empty batch: shape {tuple(shape)}")
    return shape[0], shape[2], shape[3]


def _check_values(images: Float[torch.Tensor, "batch 3 height width"]) -> None:
    """WireFormatError naming the first image with NaN, infinite or out-of-[0, 1] values."""
    per_image = images.flatten(1)
    finite = torch.isfinite(per_image).all(dim=1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        kind = "NaN" if bool(per_image[bad[0]].isnan().any()) else "infinite values"
        raise WireFormatError(
            f"images[{bad[0]}] holds {kind} (images with NaN or infinities: {bad[:10]}); "
            f"images must be finite floats in [0, 1]"
        )
    in_range = ((per_image >= 0) & (per_image <= 1)).all(dim=1)
    if not bool(in_range.all()):
        bad = (~in_range).nonzero().flatten().tolist()
        low, high = per_image[bad[0]].aminmax()
        raise WireFormatError(
            f"images[{bad[0]}] has values outside [0, 1] (min {float(low):.6g}, max "
            f"{float(high):.6g}; images out of range: {bad[:10]}); images must be in [0, 1]"
        )


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(data: bytes, what: str) -> tuple[int, int]:
    """``(height, width)`` from a PNG's IHDR chunk, which the PNG standard puts first."""
    if len(data) < 24 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise WireFormatError(f"{what} is not a PNG image (no PNG signature and IHDR header)")
    width, height = struct.unpack(">II", data[16:24])
    return height, width


def _decode_pngs(images: Any, limits: _Limits) -> Float[torch.Tensor, "batch 3 height width"]:
    from PIL import Image

    if not isinstance(images, list) or not images:
        raise WireFormatError("images must be a non-empty list of base64 PNG strings")
    # 1. Every size from the headers, before any image is decoded.
    blobs = [_b64(text, f"images[{i}]") for i, text in enumerate(images)]
    sizes = [_png_size(blob, f"images[{i}]") for i, blob in enumerate(blobs)]
    for i, (height, width) in enumerate(sizes):
        limits.add(f"images[{i}]", height, width)
    if len(set(sizes)) != 1:
        raise WireFormatError(f"images differ in size (height, width): {sizes[:10]}")
    # 2. Decode (8-bit RGB, so the floats k / 255 are in [0, 1]).
    arrays = []
    for i, blob in enumerate(blobs):
        try:
            with Image.open(io.BytesIO(blob), formats=["PNG"]) as image:
                if image.size != sizes[i][::-1]:
                    raise ValueError(f"PIL reads size {image.size}, its IHDR {sizes[i][::-1]}")
                arrays.append(np.asarray(image.convert("RGB")))
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ... for bad data
            raise WireFormatError(
                f"images[{i}] is not a PNG image PIL can decode: {type(err).__name__}: {err}"
            ) from None
    return to_float_nchw(np.stack(arrays))


def encode_answer(rewards: Float[torch.Tensor, " batch"], reward_metadata: Any) -> bytes:
    """The JSON body answering a ``POST /score`` with checked rewards and their metadata.

    Raises:
        TypeError: if ``reward_metadata`` is not JSON data (naming the offending entry).
    """
    answer = {
        "format": WIRE_FORMAT,
        "rewards": rewards.tolist(),
        "reward_metadata": to_json_data(reward_metadata, "reward_metadata"),
    }
    return json.dumps(answer).encode()


def decode_answer(content: bytes, name: str) -> tuple[Any, Any]:
    """``(rewards, reward_metadata)`` of an answer, for the reward contract's check.

    Raises:
        TypeError: in the contract's words, naming the reward function ``name``, if the answer
            is not the JSON object ``{"rewards": ..., "reward_metadata": ...}``.
    """
    try:
        answer = json.loads(content)
    except (UnicodeDecodeError, json.JSONDecodeError):
        answer = None
    if not (isinstance(answer, dict) and "rewards" in answer):
        raise TypeError(
            f"reward function {name} must return (rewards, reward_metadata), got an answer that "
            f"is not the JSON object {{rewards, reward_metadata}}: {content[:200]!r}"
        )
    return answer["rewards"], answer.get("reward_metadata", {})


def import_serve_extra(module: str) -> Any:
    """Import ``module`` of the ``serve`` extra, or ImportError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"the reward server and RemoteReward need {module}: pip install 'ddpo[serve]'"
        ) from err
