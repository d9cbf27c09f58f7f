"""A reward computed by a reward server: the client, the server and the wire format they share.

- :mod:`ddpo.rewards.remote.client`: `RemoteReward`, a reward function that sends each batch to
  a server (``ddpo train --reward remote``);
- :mod:`ddpo.rewards.remote.server`: the Starlette app serving a reward function
  (``ddpo serve-reward``): `make_app`, `serve`;
- :mod:`ddpo.rewards.remote.wire`: the wire format, version `WIRE_FORMAT` (requests, answers,
  errors, limits).

Both ends speak the reward contract of :mod:`ddpo.rewards.contract`. httpx (client), starlette
and uvicorn (server), the ``serve`` extra, are imported when a client or an app is built.
"""

from ddpo.rewards.remote.client import RemoteReward, RemoteRewardError, RemoteRewardUnavailable
from ddpo.rewards.remote.server import is_loopback, make_app, serve
from ddpo.rewards.remote.wire import (
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_REQUEST_BYTES,
    IMAGE_FORMATS,
    TOKEN_ENV,
    WIRE_FORMAT,
    ImageFormat,
    ImageTooLargeError,
    WireFormatError,
    decode_answer,
    decode_request,
    encode_answer,
    encode_request,
    to_json_data,
)

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DEFAULT_MAX_REQUEST_BYTES",
    "IMAGE_FORMATS",
    "TOKEN_ENV",
    "WIRE_FORMAT",
    "ImageFormat",
    "ImageTooLargeError",
    "RemoteReward",
    "RemoteRewardError",
    "RemoteRewardUnavailable",
    "WireFormatError",
    "decode_answer",
    "decode_request",
    "encode_answer",
    "encode_request",
    "is_loopback",
    "make_app",
    "serve",
    "to_json_data",
]
