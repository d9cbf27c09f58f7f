"""``ddpo serve-reward``: serve a registered reward over HTTP (dispatched by :mod:`ddpo.cli`).

``ddpo serve-reward --reward brightness`` serves on ``http://127.0.0.1:8000`` until Ctrl-C;
a trainer elsewhere uses it with ``RemoteReward("http://127.0.0.1:8000")``
(:mod:`ddpo.rewards.remote`; the server is :mod:`ddpo.rewards.remote.server`). The first line
printed is the server's URL (with the actual port when ``--port 0`` asks for a free one).
"""

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ddpo.rewards.registry import RewardOptions

__all__ = ["ServeArgs", "main", "parse_serve_args", "reward_options", "run_serve", "server_token"]


@dataclass
class ServeArgs:
    """Serve a reward over HTTP (``ddpo serve-reward``)."""

    reward: str
    """Registered reward name (e.g. ``brightness``, ``aesthetic``, ``pickscore``) or a weighted
    sum of them (``pickscore:1.0,ocr:0.5``), as ``ddpo train --reward`` takes."""
    port: int = 8000
    """TCP port (0: a free port, printed in the URL)."""
    host: str = "127.0.0.1"
    """Address to bind; the default accepts only this machine. Anything else should come with a
    token."""
    token: str | None = None
    """Require ``Authorization: Bearer <token>`` (default: ``$DDPO_REWARD_TOKEN`` if set; prefer
    the variable: ``ps`` shows a command line to every user of the machine)."""
    max_request_mb: float = 256.0
    """Largest request body accepted, in MiB (larger ones are refused with 413); the images of
    a request may hold at most ``max_request_mb * 2**20 / 12`` pixels (their float32 size)."""
    max_image_pixels: int = 4096 * 4096
    """Most pixels (height x width) of one image; larger ones are refused with 413 from the
    image's header, before it is decoded. At most PIL's decompression-bomb limit (89478485)."""
    device: str | None = None
    """Device of the model-based rewards (default: CUDA when available, else CPU)."""
    batch_size: int | None = None
    """Images per forward pass of the model-based rewards (default: the registry's)."""


def parse_serve_args(argv: Sequence[str]) -> ServeArgs:
    """`ServeArgs` from flags (SystemExit after ``--help`` or for a flag tyro cannot parse)."""
    import tyro

    return tyro.cli(ServeArgs, args=list(argv), prog="ddpo serve-reward", use_underscores=True)


def server_token(args: ServeArgs) -> str | None:
    """The token the server requires: ``--token``, else ``$DDPO_REWARD_TOKEN``, else None."""
    from ddpo.rewards.remote import TOKEN_ENV

    return args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None


def reward_options(args: ServeArgs) -> "RewardOptions":
    """The registry's `RewardOptions` for the flags (unset flags: the registry's defaults)."""
    from ddpo.rewards.registry import RewardOptions

    options = RewardOptions()
    if args.device is not None:
        options = replace(options, device=args.device)
    if args.batch_size is not None:
        options = replace(options, batch_size=args.batch_size)
    return options


def _check(args: ServeArgs) -> None:
    """Raise ValueError naming a bad flag (before the reward loads)."""
    from ddpo.rewards.registry import check_reward_options

    if args.batch_size is not None and args.batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {args.batch_size}")
    check_reward_options(args.reward, reward_options(args))  # names and options, nothing loads
    if not 0 <= args.port <= 65535:
        raise ValueError(f"port must be in 0..65535, got {args.port}")
    if not args.max_request_mb > 0:
        raise ValueError(f"max_request_mb must be positive, got {args.max_request_mb}")
    if args.max_image_pixels <= 0:
        raise ValueError(f"max_image_pixels must be a positive int, got {args.max_image_pixels}")
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS is not None and args.max_image_pixels > Image.MAX_IMAGE_PIXELS:
        raise ValueError(
            f"max_image_pixels must be at most PIL's decompression-bomb limit "
            f"{Image.MAX_IMAGE_PIXELS}, got {args.max_image_pixels}"
        )
    if args.token is not None and not args.token:
        raise ValueError("token must not be empty (omit --token to serve without one)")
    if not args.host:
        raise ValueError("host must not be empty")


def run_serve(args: ServeArgs) -> None:
    """Check the flags, build the reward by name and serve it until interrupted.

    Raises:
        ValueError: a bad flag (before the reward is built).
        ImportError: the reward's extra is not installed.
        OSError: the address cannot be bound.
    """
    _check(args)
    from ddpo.rewards.registry import build_reward_fn
    from ddpo.rewards.remote.server import is_loopback, serve

    token = server_token(args)
    if token is None and not is_loopback(args.host):
        print(
            f"ddpo: warning: serving on {args.host} without a token: anyone who can reach this "
            f"port can use the reward; set $DDPO_REWARD_TOKEN (or pass --token)",
            file=sys.stderr,
        )
    reward_fn = build_reward_fn(args.reward, reward_options(args))
    serve(
        reward_fn,
        name=args.reward,
        host=args.host,
        port=args.port,
        token=token,
        max_request_bytes=int(args.max_request_mb * 2**20),
        max_image_pixels=args.max_image_pixels,
        on_listening=lambda url: print(f"serving reward {args.reward!r} on {url}", flush=True),
    )


def main(argv: Sequence[str]) -> int:
    """``ddpo serve-reward``; returns the exit status (2 and one line for a bad flag)."""
    try:
        args = parse_serve_args(argv)
    except SystemExit as stop:  # --help (0), or a flag tyro could not parse (already printed)
        return stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 2
    try:
        run_serve(args)
    except (ValueError, ImportError, OSError) as err:
        print(f"ddpo: {err}", file=sys.stderr)
        return 2
    return 0
