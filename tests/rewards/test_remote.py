"""The reward server and `RemoteReward` on loopback: a real ``ddpo serve-reward`` process for the
round trip, concurrency and the token; in-process uvicorn servers (apps of `make_app` around
fake rewards, or hand-written broken servers) for each fault."""

import base64
import contextlib
import io
import json
import math
import os
import queue
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import safetensors.torch
import torch
import uvicorn
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from ddpo.rewards.remote import (
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_REQUEST_BYTES,
    RemoteReward,
    RemoteRewardError,
    RemoteRewardUnavailable,
    encode_request,
    make_app,
)

TOKEN = "s3cret-token"


def start_server(*flags: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """``python -m ddpo serve-reward --port 0 ...`` and the URL it prints on its first line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ddpo", "serve-reward", "--port", "0", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=120)
    except queue.Empty:
        stop_server(proc)
        raise AssertionError("the server printed no URL within 120 s") from None
    if "http://" not in line:
        stop_server(proc)
        raise AssertionError(f"no URL on the first line: {line!r}")
    return proc, line.split()[-1]


def stop_server(proc: subprocess.Popen) -> str:
    """Stop a server process (SIGTERM, then SIGKILL); its stderr."""
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return str(err)


@pytest.fixture(scope="module")
def brightness_url() -> Iterator[str]:
    proc, url = start_server("--reward", "brightness")
    yield url
    stop_server(proc)


@contextlib.contextmanager
def running(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread on a free loopback port; yield its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)  # listening before the URL is known: no race with the first request
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", ws="none")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


def mean_pixel(images: torch.Tensor) -> torch.Tensor:
    """The brightness reward written out: the mean over channels, rows and columns."""
    return images.sum(dim=(1, 2, 3)) / (images.shape[1] * images.shape[2] * images.shape[3])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Recorder:
    """A fake reward: the pixel mean, recording each call's batch and prompts."""

    def __init__(self, fail_first: int = 0, delay: float = 0.0) -> None:
        self.calls: list[tuple[int, Any, Any]] = []
        self.fail_first, self.delay = fail_first, delay
        self.active = self.max_active = 0
        self.lock = threading.Lock()

    def __call__(self, images: torch.Tensor, prompts: Any, metadata: Any) -> Any:
        with self.lock:
            self.calls.append((images.shape[0], prompts, metadata))
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            failing = len(self.calls) <= self.fail_first
        time.sleep(self.delay)
        with self.lock:
            self.active -= 1
        if failing:
            raise RuntimeError("model exploded")
        rewards = images.mean(dim=(1, 2, 3))
        return rewards, {"double": rewards * 2, "kind": "fake"}


# ---------------------------------------------------------------------------------------------
# Round trip and concurrency against a real `ddpo serve-reward` process


def test_health_names_the_reward(brightness_url: str) -> None:
    answer = httpx.get(f"{brightness_url}/health").json()
    assert answer["reward"] == "brightness" and answer["format"] == 1


def test_round_trip_safetensors_is_exact(brightness_url: str) -> None:
    images = torch.rand(5, 3, 16, 24, generator=torch.Generator().manual_seed(1))
    with RemoteReward(brightness_url) as remote:
        rewards, metadata = remote(images, ["a"] * 5, [{"i": i} for i in range(5)])
    assert rewards.dtype == torch.float32 and rewards.shape == (5,)
    torch.testing.assert_close(rewards, mean_pixel(images), rtol=0, atol=1e-7)
    assert metadata == {}


def test_round_trip_png_scores_the_8_bit_image(brightness_url: str) -> None:
    images = torch.rand(3, 3, 20, 20, generator=torch.Generator().manual_seed(2))
    with RemoteReward(brightness_url, image_format="png") as remote:
        rewards, _ = remote(images, None, None)
    eight_bit = (images * 255).round() / 255
    torch.testing.assert_close(rewards, mean_pixel(eight_bit), rtol=0, atol=1e-6)


def test_concurrent_clients_each_get_their_own_rewards(brightness_url: str) -> None:
    shared = RemoteReward(brightness_url, batch_size=3)
    results: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    errors: list[BaseException] = []

    def client(index: int) -> None:
        try:
            images = torch.rand(4 + index, 3, 8, 8, generator=torch.Generator().manual_seed(index))
            if index % 2:  # half share one client (one connection pool), half have their own
                rewards, _ = shared(images, None, None)
            else:
                with RemoteReward(brightness_url) as own:
                    rewards, _ = own(images, None, None)
            results[index] = (rewards, mean_pixel(images))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    shared.close()
    assert not errors
    assert sorted(results) == list(range(8))
    for rewards, expected in results.values():
        torch.testing.assert_close(rewards, expected, rtol=0, atol=1e-7)


def test_server_scores_one_request_at_a_time() -> None:
    reward = Recorder(delay=0.05)
    with running(make_app(reward)) as url, RemoteReward(url) as remote:
        threads = [
            threading.Thread(target=remote, args=(torch.rand(2, 3, 4, 4), None, None))
            for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert len(reward.calls) == 4 and reward.max_active == 1


def test_batches_are_split_and_metadata_joined() -> None:
    reward = Recorder()
    images = torch.rand(5, 3, 4, 4)
    prompts = [f"p{i}" for i in range(5)]
    with running(make_app(reward)) as url, RemoteReward(url, batch_size=2) as remote:
        rewards, metadata = remote(images, prompts, tuple({"i": i} for i in range(5)))
    assert [size for size, _, _ in reward.calls] == [2, 2, 1]
    assert [p for _, chunk, _ in reward.calls for p in chunk] == prompts
    assert [m["i"] for _, _, chunk in reward.calls for m in chunk] == list(range(5))
    torch.testing.assert_close(rewards, mean_pixel(images), rtol=0, atol=1e-7)
    assert metadata["kind"] == "fake"
    torch.testing.assert_close(torch.tensor(metadata["double"]), 2 * mean_pixel(images))


# ---------------------------------------------------------------------------------------------
# Faults


def test_server_not_running_names_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with (
        RemoteReward(url, retries=2, backoff=0.01, check=False) as remote,
        pytest.raises(ConnectionError, match=rf"{url}/score cannot be reached after 3 attempts"),
    ):
        remote(torch.rand(1, 3, 4, 4), None, None)


def test_dropped_connections_are_retried_then_reported() -> None:
    """A listener that accepts and hangs up at once: each attempt is one accepted connection."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[int] = []

    def hang_up() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                accepted.append(1)
                conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        with (
            RemoteReward(url, retries=3, backoff=0.01, check=False) as remote,
            pytest.raises(ConnectionError, match=rf"{url}/score .* after 4 attempts"),
        ):
            remote(torch.rand(1, 3, 4, 4), None, None)
    finally:
        listener.close()
    assert len(accepted) == 4


def test_slow_server_times_out_without_retrying() -> None:
    release = threading.Event()
    calls: list[int] = []

    def slow(images: torch.Tensor, prompts: Any, metadata: Any) -> Any:
        calls.append(1)
        release.wait(30)
        return images.mean(dim=(1, 2, 3)), {}

    try:
        with running(make_app(slow)) as url, RemoteReward(url, timeout=0.5, retries=2) as remote:
            with pytest.raises(TimeoutError, match=rf"{url}/score did not answer within timeout"):
                remote(torch.rand(1, 3, 4, 4), None, None)
            release.set()
    finally:
        release.set()
    assert calls == [1]


def test_5xx_is_retried_then_reported_with_the_servers_text() -> None:
    reward = Recorder(fail_first=100)
    with (
        running(make_app(reward)) as url,
        RemoteReward(url, retries=2, backoff=0.01) as remote,
        pytest.raises(RemoteRewardError, match=rf"{url}/score answered 500") as caught,
    ):
        remote(torch.rand(2, 3, 4, 4), None, None)
    assert caught.value.status == 500
    assert "RuntimeError: model exploded" in str(caught.value)
    assert "after 3 attempts" in str(caught.value)
    assert len(reward.calls) == 3


def test_5xx_then_success_returns_the_rewards() -> None:
    reward = Recorder(fail_first=2)
    images = torch.rand(2, 3, 4, 4)
    with running(make_app(reward)) as url, RemoteReward(url, retries=2, backoff=0.01) as remote:
        rewards, _ = remote(images, None, None)
    assert len(reward.calls) == 3
    torch.testing.assert_close(rewards, mean_pixel(images), rtol=0, atol=1e-7)


def _broken(body: bytes) -> Starlette:
    """A server that answers every request 200 with ``body``."""

    async def score(request: Request) -> Response:
        await request.body()
        return Response(body, media_type="application/json")

    return Starlette(routes=[Route("/score", score, methods=["POST"])])


@pytest.mark.parametrize(
    ("body", "error", "match"),
    [
        (b'{"rewards": [0.5], "reward_metadata": {}}', ValueError, r"shape \(1,\) for samples 0"),
        (b'{"rewards": [0.5, "high"]}', TypeError, r"non-numeric rewards at sample indices \[1\]"),
        (b'{"rewards": [0.5, NaN]}', ValueError, r"non-finite rewards \[nan\] at sample indices"),
        (b"<html>oops</html>", TypeError, r"must return \(rewards, reward_metadata\)"),
        (b'{"scores": [0.5, 0.5]}', TypeError, r"must return \(rewards, reward_metadata\)"),
    ],
)
def test_malformed_or_wrong_length_answer_is_the_contracts_error(
    body: bytes, error: type[Exception], match: str
) -> None:
    with (
        running(_broken(body)) as url,
        RemoteReward(url, check=False) as remote,
        pytest.raises(error, match=match) as caught,
    ):
        remote(torch.rand(2, 3, 4, 4), None, None)
    assert f"RemoteReward('{url}')" in str(caught.value)


def test_served_reward_breaking_the_contract_is_a_500_with_its_text() -> None:
    def short(images: torch.Tensor, prompts: Any, metadata: Any) -> Any:
        return [0.5], {}

    with (
        running(make_app(short)) as url,
        RemoteReward(url, retries=0) as remote,
        pytest.raises(RemoteRewardError, match=r"500 .*short returned rewards of shape"),
    ):
        remote(torch.rand(2, 3, 4, 4), None, None)


def test_request_too_large_is_refused_with_413() -> None:
    images = torch.rand(4, 3, 32, 32)  # 4 x 12 KiB of float32, a third more in base64
    one = len(encode_request(images[:1], None, None))
    reward = Recorder()
    with running(make_app(reward, max_request_bytes=2 * one)) as url:
        with (
            RemoteReward(url, retries=2) as remote,
            pytest.raises(
                RemoteRewardError, match=r"answered 413 .*over this server's limit"
            ) as caught,
        ):
            remote(images, None, None)
        assert caught.value.status == 413 and "batch_size=" in str(caught.value)
        with RemoteReward(url, batch_size=2) as remote:  # the fix the message suggests
            rewards, _ = remote(images, None, None)
        # Without Content-Length (chunked), refused while counting the received bytes.
        chunks = (encode_request(images, None, None)[i : i + 4096] for i in range(0, 99999, 4096))
        streamed = httpx.post(f"{url}/score", content=chunks)
        # A body far over the limit is refused from its Content-Length, before it is read.
        huge = httpx.post(f"{url}/score", content=b" " * (64 * 2**20))
    torch.testing.assert_close(rewards, mean_pixel(images), rtol=0, atol=1e-7)
    assert [size for size, _, _ in reward.calls] == [2, 2]  # the refused requests never ran
    assert streamed.status_code == 413 and "more than" in streamed.json()["error"]
    assert huge.status_code == 413 and f"{64 * 2**20} bytes" in huge.json()["error"]


def png(width: int, height: int, mode: str = "RGB") -> bytes:
    """A PNG of one colour (a large one compresses to a few kB: 9000x9000 1-bit is 10 kB)."""
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def request_body(images: torch.Tensor | list[bytes], /, **fields: Any) -> bytes:
    """A request body written by hand: a tensor goes as a safetensors blob (any dtype), a list
    of bytes as PNGs; ``fields`` replace the others."""
    encoded: str | list[str]
    if isinstance(images, torch.Tensor):
        image_format, encoded = "safetensors", b64(safetensors.torch.save({"images": images}))
    else:
        image_format, encoded = "png", [b64(blob) for blob in images]
    request = {"format": 1, "image_format": image_format, "images": encoded, "prompts": None}
    return json.dumps({**request, "prompt_metadata": None, **fields}).encode()


def b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode()


def test_malformed_request_is_a_400() -> None:
    reward = Recorder()
    good = encode_request(torch.rand(2, 3, 4, 4), ["a", "b"], None)
    deep = good.replace(
        b'"prompt_metadata": null', b'"prompt_metadata": ' + b"[" * 10**5 + b"]" * 10**5
    )
    cases = {
        b"not json": "not JSON",
        good.replace(b'"format": 1', b'"format": 2'): "format must be 1",
        good.replace(b'"format": 1', b'"format": true'): "format must be 1",
        good.replace(b'"prompts": ["a", "b"]', b'"prompts": ["a"]'): "1 prompts for 2 images",
        good.replace(b'"prompts": ["a", "b"]', b'"prompts": "ab"'): "prompts must be a list",
        good.replace(b'"image_format": "safetensors"', b'"image_format": "pickle"'): "pickle",
        good.replace(b'"images": "', b'"images": "AAAA'): "not a safetensors blob",
        good.replace(b'"images": "', b'"images": "\\u00e9'): "not valid base64",
        deep: "nested too deeply",
        b'{"format": 1, "prompts": ["\xff"]}': "not JSON",  # not UTF-8
        b'{"format": ' + b"9" * 5000 + b"}": "not JSON",  # an int Python will not parse
        request_body(torch.rand(0, 3, 4, 4)): "images is an empty batch",
        request_body(torch.rand(2, 3, 0, 4)): "has no pixels: 4x0",
        request_body(torch.rand(2, 3, 4, 4).half()): "float32 tensor, got dtype 'F16'",
        request_body(torch.rand(2, 4, 4, 4)): "must be (batch, 3, H, W), got shape [2, 4, 4, 4]",
        request_body(torch.rand(2, 3, 4, 4), images=5): "images must be a base64 string",
        request_body([]): "non-empty list of base64 PNG strings",
        request_body([png(4, 4), png(4, 5)]): "images differ in size",
        request_body([png(4, 4), png(4, 4)[:40]]): "images[1] is not a PNG image PIL can decode",
        request_body([b"GIF89a" + bytes(30)]): "images[0] is not a PNG image",
    }
    with running(make_app(reward)) as url:
        answers = {want: httpx.post(f"{url}/score", content=body) for body, want in cases.items()}
    for want, answer in answers.items():
        assert answer.status_code == 400, (want, answer.text)
        assert want in answer.json()["error"], (want, answer.text)
    assert reward.calls == []


def test_nan_infinite_or_out_of_range_images_are_refused_by_index() -> None:
    reward = Recorder()
    images = torch.rand(3, 3, 4, 4)
    cases = []
    for index, value, want in [
        (1, math.nan, "images[1] holds NaN"),
        (2, math.inf, "images[2] holds infinite values"),
        (0, -0.25, "images[0] has values outside [0, 1] (min -0.25"),
        (2, 1.5, "images[2] has values outside [0, 1] (min 0, max 1.5"),
    ]:
        bad = images.clone()
        bad[index] = 0.0
        bad[index, 1, 2, 3] = value
        cases.append((encode_request(bad, None, None), want))
    with running(make_app(reward)) as url:
        answers = [(httpx.post(f"{url}/score", content=body), want) for body, want in cases]
        # 8-bit PNGs decode to k / 255, always in [0, 1]: no check to fail.
        with RemoteReward(url, image_format="png") as remote:
            rewards, _ = remote(images, None, None)
    for answer, want in answers:
        assert answer.status_code == 400 and want in answer.json()["error"], answer.text
    assert [size for size, _, _ in reward.calls] == [3]
    torch.testing.assert_close(rewards, mean_pixel((images * 255).round() / 255), atol=1e-6, rtol=0)


def test_remote_reward_refuses_nan_images_before_sending() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: sending would be ConnectionError
    images = torch.rand(3, 3, 4, 4)
    images[2, 0, 0, 0] = math.nan
    with (
        RemoteReward(url, retries=0, check=False) as remote,
        pytest.raises(ValueError, match=r"images\[2\] holds NaN"),
    ):
        remote(images, None, None)


# JSON values of every kind, nested a little.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def request_bodies(draw: st.DrawFn) -> bytes:
    """Random bytes, random JSON, or a request (mostly well formed) with random images (dtype,
    shape, values, truncation) and random fields, some replaced by random JSON or left out."""
    kind = draw(st.sampled_from(["bytes", "json", "request", "request", "request"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    batch, channels = draw(st.integers(0, 3)), draw(st.sampled_from([3, 3, 1, 4]))
    height, width = draw(st.integers(0, 4)), draw(st.integers(0, 4))
    truncate = draw(st.sampled_from([False, False, False, True]))
    if draw(st.booleans()):
        dtypes = [torch.float32, torch.float32, torch.float16, torch.float64, torch.uint8]
        dtype = draw(st.sampled_from(dtypes))
        tensor = torch.full((batch, channels, height, width), 0.5).to(dtype)
        if tensor.numel() and dtype.is_floating_point:
            tensor.view(-1)[draw(st.integers(0, tensor.numel() - 1))] = draw(
                st.sampled_from([math.nan, math.inf, -1.0, 2.0, 1.0, 0.0])
            )
        blob = safetensors.torch.save({draw(st.sampled_from(["images", "images", "x"])): tensor})
        images: Any = b64(blob[: draw(st.integers(0, len(blob)))] if truncate else blob)
        image_format = "safetensors"
    else:
        modes = st.sampled_from(["RGB", "RGBA", "L", "1", "P", "I;16"])
        size = draw(st.tuples(st.integers(1, 4), st.integers(1, 4)))
        sizes = st.just(size) | st.tuples(st.integers(1, 4), st.integers(1, 4))
        blobs = [png(*draw(sizes), draw(modes)) for _ in range(batch)]
        if truncate and blobs:
            blobs[-1] = blobs[-1][: draw(st.integers(0, len(blobs[-1])))]
        images = [b64(blob) for blob in blobs]
        image_format = "png"
    request: dict[str, Any] = {
        "format": 1,
        "image_format": image_format,
        "images": images,
        "prompts": draw(st.none() | st.lists(st.text(max_size=4), min_size=batch, max_size=batch)),
        "prompt_metadata": draw(json_values),
    }
    for key in draw(st.lists(st.sampled_from(sorted(request)), max_size=2)):
        if draw(st.booleans()):
            request[key] = draw(json_values)
        else:
            request.pop(key, None)
    return json.dumps(request).encode()


def test_random_bodies_are_never_a_500_when_the_reward_does_not_fail() -> None:
    """In process (the ASGI app through Starlette's TestClient): 150 requests in a few seconds."""
    reward = Recorder()
    statuses: set[int] = set()
    with TestClient(make_app(reward)) as client:

        @settings(max_examples=150, deadline=None)
        @given(body=request_bodies())
        def post(body: bytes) -> None:
            answer = client.post("/score", content=body)
            statuses.add(answer.status_code)
            assert answer.status_code in (200, 400), answer.text
            if answer.status_code == 400:
                assert answer.json()["error"].startswith("malformed request: "), answer.text

        post()
    assert statuses == {200, 400}  # the bodies reach the reward, too


# ---------------------------------------------------------------------------------------------
# Pixel limits


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The sizes of the PNGs that PIL decodes (its `load`, which `convert` calls) and of the
    safetensors blobs loaded, recorded in this process (the servers run in a thread of it)."""
    sizes: list[tuple[int, int]] = []
    load, load_blob = ImageFile.ImageFile.load, safetensors.torch.load

    def recording_load(image: ImageFile.ImageFile) -> Any:
        if image.tile:  # not decoded yet (decoding empties it)
            sizes.append(image.size)
        return load(image)

    def recording_load_blob(blob: bytes) -> Any:
        tensor = load_blob(blob)["images"]
        sizes.append((tensor.shape[3], tensor.shape[2]))
        return {"images": tensor}

    monkeypatch.setattr(ImageFile.ImageFile, "load", recording_load)
    monkeypatch.setattr(safetensors.torch, "load", recording_load_blob)
    return sizes


def test_a_huge_png_is_refused_from_its_header(decoded: list[tuple[int, int]]) -> None:
    """The issue's bomb: 9000x9000 pixels in a 10 kB PNG (gigabytes once decoded to floats)."""
    bomb = png(9000, 9000, "1")
    assert len(bomb) < 64 * 2**10
    reward = Recorder()
    with running(make_app(reward)) as url:
        answer = httpx.post(f"{url}/score", content=request_body([png(8, 8), bomb]))
        health = httpx.get(f"{url}/health").json()
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"] == (
        "images too large: images[1] is 9000x9000 = 81000000 pixels, over this server's limit "
        "of 16777216 pixels per image (--max_image_pixels)"
    )
    assert decoded == [] and reward.calls == []  # not even the small image was decoded
    assert health["max_image_pixels"] == DEFAULT_MAX_IMAGE_PIXELS == 4096 * 4096
    assert health["max_request_pixels"] == DEFAULT_MAX_REQUEST_BYTES // 12


def test_pixel_limits_per_image_and_per_request(decoded: list[tuple[int, int]]) -> None:
    reward = Recorder()
    # At most 64 pixels an image, and 2400 // 12 = 200 pixels a request (the float32 size of the
    # largest body: only PNGs, which compress, can reach it within the body limit).
    with running(make_app(reward, max_image_pixels=64, max_request_bytes=2400)) as url:
        answers = {
            "png": httpx.post(f"{url}/score", content=request_body([png(9, 8)])),
            "tensor": httpx.post(f"{url}/score", content=request_body(torch.rand(1, 3, 8, 9))),
            "request": httpx.post(f"{url}/score", content=request_body([png(8, 7)] * 4)),
        }
        refused = list(decoded)
        ok = httpx.post(f"{url}/score", content=request_body([png(8, 7)] * 3))
        health = httpx.get(f"{url}/health").json()
    for key in ("png", "tensor"):
        assert answers[key].status_code == 413, answers[key].text
        error = answers[key].json()["error"]
        assert "is 9x8 = 72 pixels, over this server's limit of 64 pixels per image" in error
    assert answers["request"].status_code == 413, answers["request"].text
    error = answers["request"].json()["error"]
    assert "hold at least 224 pixels, over this server's limit of 200 pixels per request" in error
    assert refused == [] and ok.status_code == 200 and decoded == [(8, 7)] * 3
    assert [size for size, _, _ in reward.calls] == [3]
    assert (health["max_image_pixels"], health["max_request_pixels"]) == (64, 200)


def test_a_pixel_limit_over_pils_bomb_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="max_image_pixels must be at most PIL's decompression"):
        make_app(Recorder(), max_image_pixels=Image.MAX_IMAGE_PIXELS + 1)  # type: ignore[operator]
    with pytest.raises(ValueError, match="max_image_pixels must be a positive int, got 0"):
        make_app(Recorder(), max_image_pixels=0)


def test_prompt_metadata_that_is_not_json_is_named_before_sending() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: sending would be ConnectionError
    with RemoteReward(url, retries=0, check=False) as remote:
        with pytest.raises(TypeError, match=r"prompt_metadata\[1\]\['when'\] is of type object"):
            remote(torch.rand(2, 3, 4, 4), None, [{"when": 1}, {"when": object()}])
        with pytest.raises(ValueError, match=r"prompts must be 2 str"):
            remote(torch.rand(2, 3, 4, 4), ["only one"], None)
    with pytest.raises(RuntimeError, match="is closed"):
        remote(torch.rand(1, 3, 4, 4), None, None)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"url": "127.0.0.1:8000"}, "url must start with http"),
        ({"timeout": 0.0}, "timeout must be a positive number of seconds, got 0.0"),
        ({"timeout": float("nan")}, "timeout must be a positive number of seconds, got nan"),
        ({"retries": -1}, "retries must be an int >= 0, got -1"),
        ({"batch_size": 0}, "batch_size must be None or an int >= 1, got 0"),
        ({"image_format": "pickle"}, "image_format must be one of .* got 'pickle'"),
    ],
)
def test_bad_arguments_name_themselves(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RemoteReward(**{"url": "http://127.0.0.1:1", **kwargs})


def test_make_app_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="max_request_bytes must be a positive int, got 0"):
        make_app(Recorder(), max_request_bytes=0)


# ---------------------------------------------------------------------------------------------
# The token


def test_token_is_required_when_the_server_has_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DDPO_REWARD_TOKEN", raising=False)
    proc, url = start_server("--reward", "brightness", env={"DDPO_REWARD_TOKEN": TOKEN})
    images = torch.rand(2, 3, 8, 8)
    try:
        for token in (None, "wrong"):
            with (
                RemoteReward(url, token=token, retries=2, check=False) as remote,
                pytest.raises(RemoteRewardError, match=r"answered 401 .*Authorization: Bearer"),
            ):
                remote(images, None, None)
        with RemoteReward(url, token=TOKEN) as remote:
            rewards, _ = remote(images, None, None)
        monkeypatch.setenv("DDPO_REWARD_TOKEN", TOKEN)
        with RemoteReward(url) as remote:  # the token from the environment
            from_env, _ = remote(images, None, None)
        health = httpx.get(f"{url}/health")
    finally:
        stop_server(proc)
    torch.testing.assert_close(rewards, mean_pixel(images), rtol=0, atol=1e-7)
    torch.testing.assert_close(from_env, rewards, rtol=0, atol=0)
    assert health.status_code == 200


def test_401_is_not_retried() -> None:
    reward = Recorder()
    seen: list[int] = []
    with running(make_app(reward, token=TOKEN)) as url:
        client = RemoteReward(url, token="wrong", retries=3, backoff=0.01, check=False)
        assert client._client is not None
        client._client.event_hooks["response"].append(lambda r: seen.append(r.status_code))
        with pytest.raises(RemoteRewardError) as caught:
            client(torch.rand(1, 3, 4, 4), None, None)
        client.close()
    assert caught.value.status == 401 and seen == [401] and reward.calls == []


def test_building_checks_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DDPO_REWARD_TOKEN", raising=False)
    reward = Recorder()
    with running(make_app(reward, token=TOKEN)) as url:
        with pytest.raises(RemoteRewardUnavailable, match=rf"{url} requires a token: set \$DDPO"):
            RemoteReward(url)
        with pytest.raises(RemoteRewardUnavailable, match=rf"{url} refuses this client's token"):
            RemoteReward(url, token="wrong")
        with RemoteReward(url, token=TOKEN) as remote:
            health = remote.check()
        public = httpx.get(f"{url}/health")
        wrong = httpx.get(f"{url}/health", headers={"Authorization": "Bearer wrong"})
    with running(make_app(reward)) as url, RemoteReward(url, token="unneeded") as remote:
        open_health = remote.check()
    assert health["token_required"] is True and open_health["token_required"] is False
    assert public.status_code == 200 and public.json() == health  # /health needs no token
    assert wrong.status_code == 401  # but one that is sent is checked
    assert reward.calls == []


# ---------------------------------------------------------------------------------------------
# Checking the server when a RemoteReward is built


def test_building_checks_that_the_server_is_there() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(
        RemoteRewardUnavailable, match=rf"^reward server {url} cannot be reached"
    ) as caught:
        RemoteReward(url, retries=5, backoff=10.0)  # one attempt, no retries
    assert isinstance(caught.value, ConnectionError) and isinstance(caught.value, ValueError)

    async def health(request: Request) -> Response:
        return Response(b'{"status": "ok", "format": 2}', media_type="application/json")

    not_ours = r"answered 404 .*not a `ddpo serve-reward`"
    with (
        running(_broken(b"{}")) as other,  # a server with no /health: 404
        pytest.raises(RemoteRewardUnavailable, match=not_ours),
    ):
        RemoteReward(other)
    with (
        running(Starlette(routes=[Route("/health", health)])) as newer,
        pytest.raises(
            RemoteRewardUnavailable, match=rf"{newer} speaks wire format 2, this client 1"
        ),
    ):
        RemoteReward(newer)


def test_ddpo_exports_remote_reward_lazily_and_names_the_extra() -> None:
    code = textwrap.dedent(
        """
        import sys
        import ddpo
        assert "ddpo.rewards.remote" not in sys.modules and "httpx" not in sys.modules
        from ddpo import RemoteReward, RemoteRewardError
        import ddpo.rewards.remote as remote
        assert RemoteReward is remote.RemoteReward and RemoteRewardError is remote.RemoteRewardError
        assert "httpx" not in sys.modules and "RemoteReward" in dir(ddpo)
        sys.modules["httpx"] = None  # as if the serve extra were not installed
        try:
            RemoteReward("http://127.0.0.1:1")
        except ImportError as err:
            print(err)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (
        out.stdout.strip()
        == "the reward server and RemoteReward need httpx: pip install 'ddpo[serve]'"
    )
