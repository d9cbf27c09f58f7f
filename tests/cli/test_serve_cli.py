"""``ddpo serve-reward``: flags, errors before anything loads, the warning for a public host;
``ddpo train --reward remote`` with no server there."""

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import ddpo.rewards.remote.server
from ddpo.cli import main
from ddpo.cli_serve import parse_serve_args, reward_options
from ddpo.rewards.brightness import brightness
from ddpo.rewards.registry import RewardOptions
from ddpo.rewards.remote import DEFAULT_MAX_IMAGE_PIXELS, is_loopback


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Replace `serve` by a recorder: what `ddpo serve-reward` would serve, without serving."""
    calls: list[dict[str, Any]] = []

    def fake_serve(reward_fn: Any, **kwargs: Any) -> None:
        calls.append({"reward_fn": reward_fn, **kwargs})

    monkeypatch.setattr(ddpo.rewards.remote.server, "serve", fake_serve)
    monkeypatch.delenv("DDPO_REWARD_TOKEN", raising=False)
    return calls


def test_unknown_reward_is_one_line_before_the_server_loads() -> None:
    code = (
        "import json, sys; from ddpo.cli import main; "
        "rc = main(['serve-reward', '--reward', 'nope']); "
        "print(json.dumps([m for m in ('uvicorn', 'starlette', 'httpx') if m in sys.modules])); "
        "sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("ddpo: ") and "'nope'" in line and "'brightness'" in line
    assert json.loads(out.stdout) == []


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--port", "70000"], "ddpo: port must be in 0..65535, got 70000"),
        (["--max_request_mb", "0"], "ddpo: max_request_mb must be positive, got 0.0"),
        (["--token", ""], "ddpo: token must not be empty"),
        (["--batch_size", "0"], "ddpo: batch_size must be a positive int, got 0"),
        (["--max_image_pixels", "0"], "ddpo: max_image_pixels must be a positive int, got 0"),
        (
            ["--max_image_pixels", str(10**8)],
            "ddpo: max_image_pixels must be at most PIL's decompression-bomb limit 89478485",
        ),
    ],
)
def test_bad_flags_are_one_line_and_status_2(
    served: list[dict[str, Any]], capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    assert main(["serve-reward", "--reward", "brightness", *flags]) == 2
    assert capsys.readouterr().err.strip().startswith(message)
    assert served == []


def test_port_in_use_is_one_line_and_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve-reward", "--reward", "brightness", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ddpo: ") and "in use" in err and "\n" not in err


def test_flags_reach_the_server(
    served: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["serve-reward", "--reward", "brightness", "--port", "0", "--max_request_mb", "1.5"]
    assert main(argv) == 0
    assert main([*argv, "--max_image_pixels", "1024"]) == 0
    call, small = served
    assert call["reward_fn"].reward_fn is brightness  # wrapped for videos (per_frame)
    assert call["name"] == "brightness"
    assert call["host"] == "127.0.0.1" and call["port"] == 0 and call["token"] is None
    assert call["max_request_bytes"] == int(1.5 * 2**20)
    assert (
        call["max_image_pixels"] == DEFAULT_MAX_IMAGE_PIXELS and small["max_image_pixels"] == 1024
    )
    assert reward_options(parse_serve_args(argv[1:])) == RewardOptions()
    flags = ["--reward", "brightness", "--device", "cpu", "--batch_size", "4"]
    assert reward_options(parse_serve_args(flags)) == RewardOptions(device="cpu", batch_size=4)
    call["on_listening"]("http://127.0.0.1:1234")
    out, err = capsys.readouterr()
    assert out.strip().splitlines()[-1].split()[-1] == "http://127.0.0.1:1234"
    assert "warning" not in err


def test_a_weighted_sum_is_served(served: list[dict[str, Any]]) -> None:
    assert main(["serve-reward", "--reward", "brightness:2.0,jpeg_compressibility"]) == 0
    images = torch.rand(2, 3, 16, 16)
    rewards, metadata = served[0]["reward_fn"](images, ["a", "b"], ({}, {}))
    torch.testing.assert_close(
        rewards, 2 * metadata["brightness"] + metadata["jpeg_compressibility"]
    )
    torch.testing.assert_close(metadata["brightness"], images.mean(dim=(1, 2, 3)))


def test_public_host_warns_unless_a_token_is_set(
    served: list[dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert main(["serve-reward", "--reward", "brightness", "--host", "0.0.0.0"]) == 0
    assert "warning: serving on 0.0.0.0 without a token" in capsys.readouterr().err
    assert (
        main(["serve-reward", "--reward", "brightness", "--host", "0.0.0.0", "--token", "t"]) == 0
    )
    monkeypatch.setenv("DDPO_REWARD_TOKEN", "from-env")
    assert main(["serve-reward", "--reward", "brightness", "--host", "0.0.0.0"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert [call["token"] for call in served] == [None, "t", "from-env"]


def test_usage_and_help_list_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "ddpo serve-reward" in capsys.readouterr().out
    assert main(["serve-reward", "--help"]) == 0
    assert "--max_request_mb" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        *[("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True)],
        *[("0.0.0.0", False), ("::", False), ("192.168.1.5", False), ("example.org", False)],
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_train_with_no_reward_server_is_one_line_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from accelerate.state import PartialState

    import ddpo.adapters.families

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the error")

    monkeypatch.setattr(ddpo.adapters.families, "load_policy", forbidden)
    monkeypatch.delenv("DDPO_REWARD_TOKEN", raising=False)
    capsys.readouterr()  # what importing the adapters printed is not the command's output
    with socket.socket() as probe:  # a free port: nothing listens there
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    run = tmp_path / "run"
    try:
        status = main(
            [
                "train",
                "--reward",
                "remote",
                "--remote_reward_url",
                url,
                f"--ddpo_config.output_dir={run}",
            ]
        )
    finally:
        PartialState._reset_state()  # setup_train asked accelerate for the process index
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith(f"ddpo: reward server {url} cannot be reached: ConnectError"), line
    assert "is `ddpo serve-reward` running there?" in line
    assert not run.exists() or not any(run.iterdir())
