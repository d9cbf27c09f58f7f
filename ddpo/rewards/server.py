"""A reward served over HTTP (``ddpo serve-reward``): a Starlette app run by uvicorn.

Endpoints (the wire format is described in :mod:`ddpo.rewards.remote`):

- ``POST /score``: score a batch; answers ``{"format": 1, "rewards": [...],
  "reward_metadata": {...}}``, or an error status with ``{"error": "<message>"}``:

  - 400 a malformed request, named in the message: not JSON (or nested too deeply), another
    wire format, images that are not base64 PNG or a float32 ``(batch, 3, H, W)`` safetensors
    tensor, an empty batch or an image with no pixels, float images holding NaN, infinities or
    values outside [0, 1] (named by image index; 8-bit PNGs decode to ``k / 255``, always in
    range), prompts that are not one str per image;
  - 401 a missing or wrong ``Authorization: Bearer <token>`` (when the server has a token;
    compared in constant time);
  - 413 a body over ``max_request_bytes`` (refused from its ``Content-Length`` before reading
    it, or as soon as the bytes received pass the limit), or images over the pixel limits: more
    than ``max_image_pixels`` in one image, or more than ``max_request_pixels`` in the request
    (``max_request_bytes // 12``: the decoded float32 RGB images are never larger than the
    largest body). The sizes are read from the PNG and safetensors headers, before anything is
    decoded and without waiting for the reward;
  - 500 the reward raised or broke the reward contract (the message is the exception's text).

- ``GET /health``: ``{"status": "ok", "reward": <name>, "format": 1, "max_request_bytes": N,
  "max_image_pixels": N, "max_request_pixels": N, "token_required": bool}``. It needs no token
  and tells nothing but the reward's name and the limits; a request that sends
  ``Authorization`` has it checked as ``/score`` would (401 if wrong), so a client checks its
  token before its first batch (`ddpo.rewards.remote.RemoteReward.check`).

Concurrency: the event loop only receives bytes and sends answers. Decoding a request runs in a
worker thread outside the reward's lock (a request over the limits is refused at once, however
busy the reward), and the reward in a worker thread under one lock: requests are scored one at
a time, in the order they get the lock, so a reward that is not thread-safe (most GPU models) is
safe to serve to several clients; the others wait in the queue.
"""

import base64
import binascii
import hmac
import io
import ipaddress
import json
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from jaxtyping import Float

from ddpo.rewards._images import to_float_nchw
from ddpo.rewards.remote import IMAGE_FORMATS, WIRE_FORMAT, _require, to_json_data
from ddpo.trainer.contract import callable_name, check_rewards

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DEFAULT_MAX_REQUEST_BYTES",
    "ImageTooLargeError",
    "WireFormatError",
    "decode_request",
    "is_loopback",
    "make_app",
    "serve",
]

DEFAULT_MAX_REQUEST_BYTES = 256 * 2**20
"""256 MiB: a batch of 16 512x512 images as float32 safetensors (base64) is about 67 MiB."""
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096
"""Pixels of the largest image accepted: 4096x4096 (a 1024x1024 image is 1/16 of it); below
PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``, about 89 million)."""
_FLOAT32_RGB_BYTES = 12
"""Bytes of one decoded pixel (3 float32): ``max_request_pixels = max_request_bytes // 12``."""


class WireFormatError(ValueError):
    """A request body that does not follow the wire format (the server answers 400)."""


class ImageTooLargeError(WireFormatError):
    """Images over the server's pixel limits (the server answers 413)."""


def decode_request(
    body: bytes,
    *,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_request_pixels: int = DEFAULT_MAX_REQUEST_BYTES // _FLOAT32_RGB_BYTES,
) -> tuple[Float[torch.Tensor, "batch 3 height width"], list[str] | None, Any]:
    """``(images, prompts, prompt_metadata)`` from a request body; images float32 in [0, 1].

    The image sizes are read from the PNG or safetensors headers and checked against the
    limits before any image is decoded; float images are checked to be finite and in [0, 1].

    Args:
        body: The request body (see :mod:`ddpo.rewards.remote` for the wire format).
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


class _Scorer:
    """Decode a request body; score it with the reward (one call at a time), encode the answer."""

    def __init__(
        self,
        reward_fn: Callable[..., Any],
        name: str,
        *,
        max_image_pixels: int,
        max_request_pixels: int,
    ) -> None:
        self.reward_fn = reward_fn
        self.name = name
        self.max_image_pixels, self.max_request_pixels = max_image_pixels, max_request_pixels
        self.lock = threading.Lock()

    def decode(self, body: bytes) -> tuple[torch.Tensor, list[str] | None, Any]:
        """`decode_request` with this server's limits (no lock: the reward may run meanwhile)."""
        return decode_request(
            body,
            max_image_pixels=self.max_image_pixels,
            max_request_pixels=self.max_request_pixels,
        )

    def score(self, request: tuple[torch.Tensor, list[str] | None, Any]) -> bytes:
        """The answer's body for a decoded request; raises what the reward or contract raise."""
        images, prompts, prompt_metadata = request
        with self.lock:
            result = self.reward_fn(images, prompts, prompt_metadata)
        rewards, metadata = check_rewards(
            result, self.reward_fn, batch_size=images.shape[0], offset=0
        )
        answer = {
            "format": WIRE_FORMAT,
            "rewards": rewards.tolist(),
            "reward_metadata": to_json_data(metadata, "reward_metadata"),
        }
        return json.dumps(answer).encode()


def make_app(
    reward_fn: Callable[..., Any],
    *,
    name: str | None = None,
    token: str | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> Any:
    """The ASGI app serving ``reward_fn`` (a Starlette application; see the module docstring).

    Args:
        reward_fn: A reward function of the reward contract.
        name: The reward's name for ``/health`` and messages (default: the function's name).
        token: If set, ``POST /score`` requires ``Authorization: Bearer <token>``.
        max_request_bytes: Largest request body accepted; the images of a request may hold at
            most ``max_request_bytes // 12`` pixels (their size as float32 RGB).
        max_image_pixels: Most pixels (``H * W``) of one image, at most PIL's
            decompression-bomb limit ``PIL.Image.MAX_IMAGE_PIXELS``.

    Raises:
        ValueError: if ``max_request_bytes`` or ``max_image_pixels`` is not a positive int (or
            the latter is over PIL's limit), or ``token`` is empty.
    """
    from PIL import Image

    for arg, value in (
        ("max_request_bytes", max_request_bytes),
        ("max_image_pixels", max_image_pixels),
    ):
        if isinstance(value, bool) or not (isinstance(value, int) and value > 0):
            raise ValueError(f"{arg} must be a positive int, got {value!r}")
    pil_limit = Image.MAX_IMAGE_PIXELS
    if pil_limit is not None and max_image_pixels > pil_limit:
        raise ValueError(
            f"max_image_pixels must be at most PIL's decompression-bomb limit "
            f"PIL.Image.MAX_IMAGE_PIXELS = {pil_limit}, got {max_image_pixels}"
        )
    if token is not None and not token:
        raise ValueError("token must be a non-empty string or None, got ''")
    _require("starlette")
    import anyio.to_thread
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    name = name or callable_name(reward_fn)
    max_request_pixels = max_request_bytes // _FLOAT32_RGB_BYTES
    scorer = _Scorer(
        reward_fn, name, max_image_pixels=max_image_pixels, max_request_pixels=max_request_pixels
    )
    expected = f"Bearer {token}".encode() if token else None
    limit_mib = max_request_bytes / 2**20

    def error(status: int, message: str, **headers: str) -> Response:
        return JSONResponse({"error": message}, status_code=status, headers=headers or None)

    def unauthorized(request: Request) -> Response | None:
        """The 401 answer if the server has a token and the request does not carry it."""
        if expected is None:
            return None
        given = request.headers.get("authorization", "").encode()
        if hmac.compare_digest(given, expected):
            return None
        return error(
            401,
            "this reward server requires the header 'Authorization: Bearer <token>' with its token",
            **{"WWW-Authenticate": "Bearer"},
        )

    def too_large(size: str) -> Response:
        return error(
            413,
            f"request body of {size} is over this server's limit of {max_request_bytes} bytes "
            f"({limit_mib:.1f} MiB, --max_request_mb); send fewer images per request",
        )

    async def health(request: Request) -> Response:
        # No token needed; one that is sent is checked, so that a client can check its own.
        if "authorization" in request.headers and (refused := unauthorized(request)):
            return refused
        return JSONResponse(
            {
                "status": "ok",
                "reward": name,
                "format": WIRE_FORMAT,
                "max_request_bytes": max_request_bytes,
                "max_image_pixels": max_image_pixels,
                "max_request_pixels": max_request_pixels,
                "token_required": expected is not None,
            }
        )

    async def score(request: Request) -> Response:
        if refused := unauthorized(request):
            return refused
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                return error(400, f"bad Content-Length header {declared!r}")
            if int(declared) > max_request_bytes:
                return too_large(f"{int(declared)} bytes (Content-Length)")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_request_bytes:
                return too_large(f"more than {max_request_bytes} bytes")
        # 1. Decode in a worker thread, without the reward's lock: a request over the limits is
        #    refused from its headers at once, however busy the reward is.
        try:
            decoded = await anyio.to_thread.run_sync(scorer.decode, bytes(body))
        except ImageTooLargeError as err:
            return error(413, f"images too large: {err}")
        except WireFormatError as err:
            return error(400, f"malformed request: {err}")
        except Exception as err:  # a bug of this server, not the reward's fault
            return error(
                500, f"the reward server failed to decode the request: {type(err).__name__}: {err}"
            )
        # 2. Score under the lock: 500 only when the reward raises or breaks the contract.
        try:
            answer = await anyio.to_thread.run_sync(scorer.score, decoded)
        except Exception as err:
            return error(500, f"reward {name!r} failed: {type(err).__name__}: {err}")
        return Response(answer, media_type="application/json")

    return Starlette(
        routes=[
            Route("/score", score, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ]
    )


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (``localhost``, ``127.x.x.x``, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    reward_fn: Callable[..., Any],
    *,
    name: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    on_listening: Callable[[str], object] = print,
) -> None:
    """Serve ``reward_fn`` with uvicorn until interrupted (SIGINT/SIGTERM stop it cleanly).

    The socket is bound and listening before ``on_listening`` gets the server's URL
    (``http://host:port``, with the actual port when ``port`` is 0), so a client may connect
    as soon as it has the URL.

    Raises:
        OSError: if the address cannot be bound (e.g. the port is in use).
    """
    uvicorn = _require("uvicorn")
    app = make_app(
        reward_fn,
        name=name,
        token=token,
        max_request_bytes=max_request_bytes,
        max_image_pixels=max_image_pixels,
    )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    bound_port = sock.getsockname()[1]
    on_listening(f"http://{f'[{host}]' if family == socket.AF_INET6 else host}:{bound_port}")
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", ws="none")
    uvicorn.Server(config).run(sockets=[sock])
