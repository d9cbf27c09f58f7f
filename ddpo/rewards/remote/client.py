"""`RemoteReward`: a reward function that asks a reward server (``ddpo serve-reward``).

It sends each batch over HTTP to a server built by :mod:`ddpo.rewards.remote.server` in the
wire format of :mod:`ddpo.rewards.remote.wire`, and returns the rewards and metadata it answers,
checked against the reward contract (:mod:`ddpo.rewards.contract`).
"""

import math
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float

from ddpo.rewards._images import to_float_nchw
from ddpo.rewards.contract import check_rewards
from ddpo.rewards.remote.wire import (
    IMAGE_FORMATS,
    TOKEN_ENV,
    WIRE_FORMAT,
    ImageFormat,
    decode_answer,
    encode_request,
    import_serve_extra,
    to_json_data,
)

__all__ = ["RemoteReward", "RemoteRewardError", "RemoteRewardUnavailable"]


class RemoteRewardError(RuntimeError):
    """The reward server answered with an error status (the message names URL, status, text)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class RemoteRewardUnavailable(ConnectionError, ValueError):
    """The reward server cannot be used: nothing answers at the URL, it is not a ``ddpo``
    reward server, it speaks another wire format, or it refuses the token (`RemoteReward.check`).

    Both a ConnectionError and a ValueError (a bad ``url`` or ``token``), as
    `io.UnsupportedOperation` is both an OSError and a ValueError: ``ddpo train`` reports it in
    one line, before the model loads, like any bad flag.
    """


class RemoteReward:
    """A reward function that asks a reward server (``ddpo serve-reward``) for the rewards.

    Each call sends the batch (in chunks of ``batch_size``) to ``POST <url>/score`` and returns
    ``(rewards, reward_metadata)``: rewards a float32 tensor ``(batch,)``, the metadata the
    server's (per-sample lists of the chunks joined). Connection errors and 5xx answers are
    retried ``retries`` times with exponential backoff (``backoff * 2**attempt`` seconds, at most
    10 s); a timeout or a 4xx answer is not retried. The answer is checked with
    `ddpo.rewards.contract.check_rewards`. Safe to call from several threads
    (``async_reward_computation``): they share one connection pool. Use it as a context manager,
    or call `close`.

    Building it checks the server (`check`: ``GET /health`` and the token), unless
    ``check=False``.

    Args:
        url: The server's base URL, ``http://host:port``.
        timeout: Seconds to wait for the server (connect, send, each read).
        retries: Extra attempts after a connection error or a 5xx answer.
        batch_size: Images per request (None: the whole batch in one request).
        token: Bearer token the server requires (None: ``$DDPO_REWARD_TOKEN`` if set).
        image_format: ``"safetensors"`` (exact floats) or ``"png"`` (8-bit, smaller).
        backoff: Seconds before the first retry.
        check: Check the server now (`check`).

    Raises:
        ValueError: for a bad argument.
        RemoteRewardUnavailable: if ``check`` and the server cannot be used (see `check`).
        ImportError: if httpx is not installed (``pip install 'ddpo[serve]'``).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 60.0,
        retries: int = 2,
        batch_size: int | None = None,
        token: str | None = None,
        image_format: str = "safetensors",
        backoff: float = 0.5,
        check: bool = True,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, got {retries!r}")
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise ValueError(f"batch_size must be None or an int >= 1, got {batch_size!r}")
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
        if not (isinstance(backoff, int | float) and 0 <= backoff < math.inf):
            raise ValueError(f"backoff must be a number of seconds >= 0, got {backoff!r}")
        httpx = import_serve_extra("httpx")

        self.url = url.rstrip("/")
        self.timeout, self.retries, self.batch_size = float(timeout), retries, batch_size
        self.image_format: ImageFormat = "png" if image_format == "png" else "safetensors"
        self.backoff = float(backoff)
        self.__name__ = f"RemoteReward({self.url!r})"  # how the contract's errors name it
        token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._has_token = bool(token)
        self._client: Any = httpx.Client(headers=headers, timeout=self.timeout)  # None: closed
        self._lock = threading.Lock()
        if check:
            try:
                self.check()
            except BaseException:
                self.close()
                raise

    def __repr__(self) -> str:
        return self.__name__

    def __enter__(self) -> "RemoteReward":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check(self, *, timeout: float = 10.0) -> dict[str, Any]:
        """Ask ``GET <url>/health`` (with the token, which the server then checks) whether the
        server can score this client's requests; one attempt, waiting at most ``timeout``
        seconds (or the client's ``timeout`` if shorter).

        Returns:
            The server's ``/health`` answer (its reward's name, wire format and limits).

        Raises:
            RemoteRewardUnavailable: naming the URL and the cause: nothing answers there (or
                not within the timeout), the answer is not a ``ddpo`` reward server's, another
                wire format, the token is refused, or the server requires one and none is set.
        """
        import httpx

        with self._lock:
            client = self._client
        if client is None:
            raise RuntimeError(f"{self.__name__} is closed")
        endpoint = f"{self.url}/health"
        try:
            response = client.get(endpoint, timeout=min(timeout, self.timeout))
        except httpx.TransportError as err:  # connection refused, DNS, timeouts, ...
            raise RemoteRewardUnavailable(
                f"reward server {self.url} cannot be reached: {type(err).__name__}: "
                f"{err or 'connection failed'} (is `ddpo serve-reward` running there?)"
            ) from err
        if response.status_code == 401:
            raise RemoteRewardUnavailable(
                f"reward server {self.url} refuses this client's token (401): pass its token "
                f"as token= to RemoteReward (--remote_reward_token) or in ${TOKEN_ENV}"
            )
        try:
            health = response.json() if response.status_code == 200 else None
        except ValueError:
            health = None
        if not (isinstance(health, dict) and health.get("status") == "ok" and "format" in health):
            raise RemoteRewardUnavailable(
                f"reward server {self.url}: GET {endpoint} answered {response.status_code} "
                f"{response.reason_phrase} {response.text[:200]!r}, not a `ddpo serve-reward` "
                f"health answer (is the URL the server's base URL?)"
            )
        if health["format"] != WIRE_FORMAT:
            raise RemoteRewardUnavailable(
                f"reward server {self.url} speaks wire format {health['format']!r}, this client "
                f"{WIRE_FORMAT}: install the same ddpo version on both sides"
            )
        if health.get("token_required") and not self._has_token:
            raise RemoteRewardUnavailable(
                f"reward server {self.url} requires a token: set ${TOKEN_ENV} (or pass token= "
                f"to RemoteReward, --remote_reward_token)"
            )
        return health

    def close(self) -> None:
        """Close the connections (calling afterwards raises RuntimeError)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def __call__(
        self, images: Any, prompts: Sequence[str] | None = None, prompt_metadata: Any = None
    ) -> tuple[Float[torch.Tensor, " batch"], Any]:
        """Score ``images`` on the server (see the class docstring).

        Raises:
            ValueError, TypeError: bad images or prompts, prompt metadata that is not JSON data
                (before anything is sent); an answer that breaks the reward contract.
            ConnectionError: the server cannot be reached (after the retries).
            TimeoutError: the server did not answer within ``timeout``.
            RemoteRewardError: the server answered an error status (5xx after the retries).
        """
        pixels = to_float_nchw(images)
        size = pixels.shape[0]
        nan_images = pixels.flatten(1).isnan().any(dim=1).nonzero().flatten().tolist()
        if nan_images:
            raise ValueError(
                f"images[{nan_images[0]}] holds NaN (images with NaN: {nan_images[:10]}); a "
                f"reward server scores finite images in [0, 1] only"
            )
        if prompts is not None:
            prompts = list(prompts)
            if len(prompts) != size or not all(isinstance(p, str) for p in prompts):
                raise ValueError(f"prompts must be {size} str (one per image), got {prompts!r}")
        per_sample = isinstance(prompt_metadata, list | tuple) and len(prompt_metadata) == size
        to_json_data(prompt_metadata, "prompt_metadata")  # fail before any request
        if size == 0:
            return torch.zeros(0), {}
        step = self.batch_size or size
        rewards, metadata = [], []
        for start in range(0, size, step):
            stop = min(start + step, size)
            answer = self._post(
                encode_request(
                    pixels[start:stop],
                    None if prompts is None else prompts[start:stop],
                    prompt_metadata[start:stop] if per_sample else prompt_metadata,
                    image_format=self.image_format,
                ),
                stop - start,
            )
            values, chunk_metadata = check_rewards(
                answer, self, batch_size=stop - start, offset=start
            )
            rewards.append(values)
            metadata.append(chunk_metadata)
        return torch.cat(rewards), _join_metadata(metadata, [len(r) for r in rewards])

    def _post(self, body: bytes, size: int) -> tuple[Any, Any]:
        import httpx

        endpoint = f"{self.url}/score"
        for attempt in range(self.retries + 1):
            with self._lock:
                client = self._client
            if client is None:
                raise RuntimeError(f"{self.__name__} is closed")
            last = attempt == self.retries
            try:
                response = client.post(endpoint, content=body)
            except httpx.TimeoutException as err:
                if isinstance(err, httpx.ConnectTimeout) and not last:
                    self._sleep(attempt)
                    continue
                raise TimeoutError(
                    f"reward server {endpoint} did not answer within timeout={self.timeout} s "
                    f"({type(err).__name__})"
                ) from err
            except httpx.TransportError as err:
                if not last:
                    self._sleep(attempt)
                    continue
                raise ConnectionError(
                    f"reward server {endpoint} cannot be reached after {attempt + 1} attempts: "
                    f"{type(err).__name__}: {err or 'connection failed'} (is `ddpo serve-reward` "
                    f"running there?)"
                ) from err
            if response.status_code >= 500 and not last:
                self._sleep(attempt)
                continue
            if response.status_code != 200:
                raise _status_error(endpoint, response, attempt + 1, len(body), size)
            return decode_answer(response.content, self.__name__)
        raise AssertionError("unreachable")  # pragma: no cover

    def _sleep(self, attempt: int) -> None:
        time.sleep(min(self.backoff * 2**attempt, 10.0))


def _status_error(endpoint: str, response: Any, attempts: int, nbytes: int, size: int) -> Exception:
    try:
        text = str(response.json()["error"])
    except Exception:  # not our server's JSON error: show the start of the body
        text = response.text[:500]
    status = response.status_code
    message = f"reward server {endpoint} answered {status} {response.reason_phrase}: {text}"
    if status >= 500:
        message += f" (after {attempts} attempts)"
    if status == 413:
        message += (
            f" (the request was {nbytes / 2**20:.1f} MiB for {size} images; pass a smaller "
            f"batch_size= to RemoteReward, image_format='png', or raise the server's "
            f"--max_request_mb)"
        )
    if status == 401:
        message += f" (pass token= to RemoteReward or set ${TOKEN_ENV})"
    return RemoteRewardError(message, status=status)


def _join_metadata(parts: list[Any], sizes: list[int]) -> Any:
    """One metadata for the whole batch: per-sample lists of the chunks joined; a value that is
    not per-sample is kept once if the chunks agree, else as the list of their values."""
    if len(parts) == 1:
        return parts[0]
    if not all(isinstance(p, dict) for p in parts) or len({tuple(p) for p in parts}) != 1:
        return parts
    joined: dict[str, Any] = {}
    for key in parts[0]:
        values = [p[key] for p in parts]
        if all(isinstance(v, list) and len(v) == n for v, n in zip(values, sizes, strict=True)):
            joined[key] = [item for v in values for item in v]
        elif all(v == values[0] for v in values):
            joined[key] = values[0]
        else:
            joined[key] = values
    return joined
