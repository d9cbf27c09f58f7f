"""The reward server (``ddpo serve-reward``): a Starlette app, run by uvicorn, that serves a
reward function of the reward contract (:mod:`ddpo.rewards.contract`) in the wire format of
:mod:`ddpo.rewards.remote.wire` (its endpoints, answers and error statuses).

Limits: a body over ``max_request_bytes`` is refused with 413 from its ``Content-Length``
before it is read, or as soon as the bytes received pass the limit; the image sizes are read
from the PNG and safetensors headers and checked against the pixel limits before anything is
decoded and without waiting for the reward. The token is compared in constant time.

Concurrency: the event loop only receives bytes and sends answers. Decoding a request runs in a
worker thread outside the reward's lock (a request over the limits is refused at once, however
busy the reward), and the reward in a worker thread under one lock: requests are scored one at
a time, in the order they get the lock, so a reward that is not thread-safe (most GPU models) is
safe to serve to several clients; the others wait in the queue.
"""

import hmac
import ipaddress
import socket
import threading
from collections.abc import Callable
from typing import Any

import torch

from ddpo._callables import callable_name
from ddpo.rewards.contract import RewardFunction, check_rewards
from ddpo.rewards.remote.wire import (
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_REQUEST_BYTES,
    FLOAT32_RGB_BYTES,
    WIRE_FORMAT,
    ImageTooLargeError,
    WireFormatError,
    decode_request,
    encode_answer,
    import_serve_extra,
)

__all__ = ["is_loopback", "make_app", "serve"]


class _Scorer:
    """Decode a request body; score it with the reward (one call at a time), encode the answer."""

    def __init__(
        self,
        reward_fn: RewardFunction,
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
            # Prompts that a client sent as null reach the reward as None (the contract's note).
            result = self.reward_fn(images, prompts, prompt_metadata)  # type: ignore[arg-type]
        rewards, metadata = check_rewards(
            result, self.reward_fn, batch_size=images.shape[0], offset=0
        )
        return encode_answer(rewards, metadata)


def make_app(
    reward_fn: RewardFunction,
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
    import_serve_extra("starlette")
    import anyio.to_thread
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    name = name or callable_name(reward_fn)
    max_request_pixels = max_request_bytes // FLOAT32_RGB_BYTES
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
    reward_fn: RewardFunction,
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
    uvicorn = import_serve_extra("uvicorn")
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
