"""A reward served over HTTP (``ddpo serve-reward``): a Starlette app run by uvicorn.

Endpoints (the wire format is described in :mod:`ddpo.rewards.remote`):

- ``POST /score``: score a batch; answers ``{"format": 1, "rewards": [...],
  "reward_metadata": {...}}``, or an error status with ``{"error": "<message>"}``: 400 a
  malformed request, 401 a missing or wrong ``Authorization: Bearer <token>`` (when the server
  has a token; compared in constant time), 413 a body over ``max_request_bytes`` (refused from
  its ``Content-Length`` before reading it, or as soon as the bytes received pass the limit),
  500 the reward raised or broke the reward contract (the message is the exception's text).
- ``GET /health``: ``{"status": "ok", "reward": <name>, "format": 1, "max_request_bytes": N}``
  (no token needed: it tells nothing but the reward's name).

Concurrency: the event loop only receives bytes and sends answers. Decoding a request runs in a
worker thread, and so does the reward, under one lock: requests are scored one at a time, in
the order they get the lock, so a reward that is not thread-safe (most GPU models) is safe to
serve to several clients; the others wait in the queue.
"""

import base64
import binascii
import hmac
import io
import ipaddress
import json
import socket
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
    "DEFAULT_MAX_REQUEST_BYTES",
    "WireFormatError",
    "decode_request",
    "is_loopback",
    "make_app",
    "serve",
]

DEFAULT_MAX_REQUEST_BYTES = 256 * 2**20
"""256 MiB: a batch of 16 512x512 images as float32 safetensors (base64) is about 67 MiB."""


class WireFormatError(ValueError):
    """A request body that does not follow the wire format (the server answers 400)."""


def decode_request(
    body: bytes,
) -> tuple[Float[torch.Tensor, "batch 3 height width"], list[str] | None, Any]:
    """``(images, prompts, prompt_metadata)`` from a request body; images float32 in [0, 1].

    Raises:
        WireFormatError: naming what is wrong with the body.
    """
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WireFormatError(f"the request body is not JSON: {err}") from None
    if not isinstance(request, dict):
        raise WireFormatError(f"the request body must be a JSON object, got {type(request)}")
    if request.get("format") != WIRE_FORMAT:
        raise WireFormatError(
            f"format must be {WIRE_FORMAT} (this server's wire format), got "
            f"{request.get('format')!r}"
        )
    image_format = request.get("image_format")
    if image_format not in IMAGE_FORMATS:
        raise WireFormatError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    images = _decode_images(request.get("images"), image_format)
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
    except binascii.Error as err:
        raise WireFormatError(f"{what} is not valid base64: {err}") from None


def _decode_images(images: Any, image_format: str) -> Float[torch.Tensor, "batch 3 height width"]:
    if image_format == "safetensors":
        import safetensors.torch

        try:
            tensors = safetensors.torch.load(_b64(images, "images"))
        except Exception as err:  # safetensors raises its own error types for a bad blob
            raise WireFormatError(f"images is not a safetensors blob: {err}") from None
        tensor = tensors.get("images")
        if tensor is None or tensor.dtype != torch.float32:
            raise WireFormatError("images must hold a float32 tensor named 'images'")
        if tensor.ndim != 4 or tensor.shape[1] != 3 or tensor.shape[0] == 0:
            raise WireFormatError(f"images must be (batch, 3, H, W), got {tuple(tensor.shape)}")
        return tensor
    from PIL import Image, UnidentifiedImageError

    if not isinstance(images, list) or not images:
        raise WireFormatError("images must be a non-empty list of base64 PNG strings")
    arrays = []
    for i, text in enumerate(images):
        try:
            with Image.open(io.BytesIO(_b64(text, f"images[{i}]")), formats=["PNG"]) as image:
                arrays.append(np.asarray(image.convert("RGB")))
        except (UnidentifiedImageError, OSError) as err:
            raise WireFormatError(f"images[{i}] is not a PNG image: {err}") from None
    if len({a.shape for a in arrays}) != 1:
        raise WireFormatError(f"images differ in size: {[a.shape[:2] for a in arrays]}")
    return to_float_nchw(np.stack(arrays))


class _Scorer:
    """Decode a request body, score it with the reward (one call at a time), encode the answer."""

    def __init__(self, reward_fn: Callable[..., Any], name: str) -> None:
        self.reward_fn = reward_fn
        self.name = name
        self.lock = threading.Lock()

    def __call__(self, body: bytes) -> bytes:
        images, prompts, prompt_metadata = decode_request(body)  # WireFormatError: 400
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
) -> Any:
    """The ASGI app serving ``reward_fn`` (a Starlette application; see the module docstring).

    Args:
        reward_fn: A reward function of the reward contract.
        name: The reward's name for ``/health`` and messages (default: the function's name).
        token: If set, ``POST /score`` requires ``Authorization: Bearer <token>``.
        max_request_bytes: Largest request body accepted.

    Raises:
        ValueError: if ``max_request_bytes`` is not positive or ``token`` is empty.
    """
    if isinstance(max_request_bytes, bool) or not (
        isinstance(max_request_bytes, int) and max_request_bytes > 0
    ):
        raise ValueError(f"max_request_bytes must be a positive int, got {max_request_bytes!r}")
    if token is not None and not token:
        raise ValueError("token must be a non-empty string or None, got ''")
    _require("starlette")
    import anyio.to_thread
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    name = name or callable_name(reward_fn)
    scorer = _Scorer(reward_fn, name)
    expected = f"Bearer {token}".encode() if token else None
    limit_mib = max_request_bytes / 2**20

    def error(status: int, message: str, **headers: str) -> Response:
        return JSONResponse({"error": message}, status_code=status, headers=headers or None)

    def too_large(size: str) -> Response:
        return error(
            413,
            f"request body of {size} is over this server's limit of {max_request_bytes} bytes "
            f"({limit_mib:.1f} MiB, --max_request_mb); send fewer images per request",
        )

    async def health(request: Request) -> Response:
        return JSONResponse(
            {
                "status": "ok",
                "reward": name,
                "format": WIRE_FORMAT,
                "max_request_bytes": max_request_bytes,
            }
        )

    async def score(request: Request) -> Response:
        if expected is not None:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return error(
                    401,
                    "this reward server requires the header 'Authorization: Bearer <token>' "
                    "with its token",
                    **{"WWW-Authenticate": "Bearer"},
                )
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
        try:
            answer = await anyio.to_thread.run_sync(scorer, bytes(body))
        except WireFormatError as err:
            return error(400, f"malformed request: {err}")
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
    app = make_app(reward_fn, name=name, token=token, max_request_bytes=max_request_bytes)
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
