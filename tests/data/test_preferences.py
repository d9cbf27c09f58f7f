"""Diffusion-DPO's offline preference pairs: Pick-a-Pic Parquet shards (ties dropped, label 0
swapped, ``limit``, a folder of shards), a local ``pairs.jsonl`` folder, the errors naming the
file, row and column, the training transform, and the latents through ``encode_images`` with
their on-disk cache (on the tiny SD and SD3 models)."""

import io
import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch import Tensor

from ddpo.adapters import load_policy
from ddpo.data.preferences import (
    PreferencePair,
    encode_preference_pairs,
    load_square_image,
    read_preference_pairs,
)


def image_bytes(
    colour: tuple[int, ...], size: tuple[int, int], fmt: str, mode: str = "RGB"
) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


RED = image_bytes((220, 20, 20), (80, 48), "PNG")
BLUE = image_bytes((20, 40, 230), (48, 80), "JPEG")
GREEN = image_bytes((20, 200, 40), (64, 64), "PNG")
YELLOW = image_bytes((240, 230, 20), (40, 40), "JPEG")
GRAY = image_bytes((128,), (50, 70), "PNG", mode="L")

Row = tuple[Any, Any, Any, Any]  # caption, jpg_0, jpg_1, label_0


def write_pickapic(file: Path, rows: list[Row], *, drop: tuple[str, ...] = ()) -> Path:
    """A Parquet file in Pick-a-Pic's layout (two rows a row group, and a column not read)."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    labels = [row[3] for row in rows]
    columns = {
        "caption": pa.array([row[0] for row in rows], pa.string()),
        "jpg_0": pa.array([row[1] for row in rows], pa.binary()),
        "jpg_1": pa.array([row[2] for row in rows], pa.binary()),
        "label_0": pa.array(labels, pa.float64()),
        "label_1": pa.array([None if v is None else 1 - v for v in labels], pa.float64()),
        "ranking_id": pa.array(range(len(rows)), pa.int64()),
    }
    table = pa.table({name: c for name, c in columns.items() if name not in drop})
    pq.write_table(table, file, row_group_size=2)
    return file


ROWS: list[Row] = [
    ("a red circle", RED, BLUE, 1.0),
    ("a tie", GREEN, YELLOW, 0.5),
    ("a blue square", RED, BLUE, 0.0),
    ("a green field", GREEN, GRAY, 1.0),
    ("another tie", BLUE, RED, 0.5),
    ("a yellow sun", GRAY, YELLOW, 0.0),
]


def summary(pairs: list[PreferencePair]) -> list[tuple[str, bytes, bytes, str]]:
    return [(p.prompt, p.preferred, p.other, p.source) for p in pairs]


# ---- Pick-a-Pic ---------------------------------------------------------------------------------


def test_pickapic_drops_ties_and_puts_the_preferred_image_first(tmp_path: Path) -> None:
    file = write_pickapic(tmp_path / "shard.parquet", ROWS)
    pairs = read_preference_pairs(file)
    assert summary(pairs) == [
        ("a red circle", RED, BLUE, "shard.parquet row 0"),
        ("a blue square", BLUE, RED, "shard.parquet row 2"),
        ("a green field", GREEN, GRAY, "shard.parquet row 3"),
        ("a yellow sun", YELLOW, GRAY, "shard.parquet row 5"),
    ]
    assert "PreferencePair(prompt='a red circle', source=" in repr(pairs[0])  # no bytes


def test_rows_are_counted_across_batches_and_limit_counts_pairs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ddpo.data.preferences._ROWS_PER_BATCH", 2)
    file = write_pickapic(tmp_path / "shard.parquet", ROWS)
    assert [p.source for p in read_preference_pairs(file)][-1] == "shard.parquet row 5"
    assert [p.prompt for p in read_preference_pairs(file, limit=2)] == [
        "a red circle",
        "a blue square",
    ]


def test_a_folder_of_shards_is_read_in_the_order_of_their_names(tmp_path: Path) -> None:
    write_pickapic(tmp_path / "train-00001.parquet", ROWS[3:])
    write_pickapic(tmp_path / "train-00000.parquet", ROWS[:3])
    (tmp_path / "README.md").write_text("not a shard")
    pairs = read_preference_pairs(tmp_path)
    assert [p.source for p in pairs] == [
        "train-00000.parquet row 0",
        "train-00000.parquet row 2",
        "train-00001.parquet row 0",
        "train-00001.parquet row 2",
    ]
    limited = read_preference_pairs(tmp_path, limit=3)
    assert summary(limited) == summary(pairs[:3])


@pytest.mark.parametrize(
    ("rows", "drop", "message"),
    [
        (ROWS, ("jpg_1",), r"row 0: no column 'jpg_1'"),
        ([ROWS[0], ("x", None, RED, 1.0)], (), r"row 1: jpg_0 is null"),
        ([ROWS[0], ROWS[1], ("x", RED, b"not an image", 0.0)], (), r"row 2: jpg_1 holds bytes"),
        ([ROWS[0], ("x", RED, BLUE, 0.3)], (), r"row 1: label_0 must be 1 .* got 0\.3"),
        ([ROWS[0], ("x", RED, BLUE, None)], (), r"row 1: label_0 must be 1 .* got None"),
        ([(None, RED, BLUE, 1.0)], (), r"row 0: caption must be a string, got None"),
    ],
    ids=["missing-column", "null-bytes", "not-an-image", "bad-label", "null-label", "no-caption"],
)
def test_an_unreadable_row_names_the_file_row_and_column(
    tmp_path: Path, rows: list[Row], drop: tuple[str, ...], message: str
) -> None:
    file = write_pickapic(tmp_path / "shard.parquet", rows, drop=drop)
    with pytest.raises(ValueError, match=re.escape(str(file)) + " " + message):
        read_preference_pairs(file)


# ---- a local folder ---------------------------------------------------------------------------


def write_folder(folder: Path, lines: list[Any]) -> Path:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for name, data in (("red.png", RED), ("blue.jpg", BLUE), ("bad.png", b"\x89PNG broken")):
        (folder / "images" / name).write_bytes(data)
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    (folder / "pairs.jsonl").write_text(text + "\n")
    return folder


def test_a_pairs_jsonl_folder(tmp_path: Path) -> None:
    write_folder(
        tmp_path,
        [
            {"prompt": "a red circle", "preferred": "images/red.png", "other": "images/blue.jpg"},
            "",
            {"prompt": "a blue square", "preferred": "images/blue.jpg", "other": "images/red.png"},
        ],
    )
    assert summary(read_preference_pairs(tmp_path)) == [
        ("a red circle", RED, BLUE, "pairs.jsonl line 1"),
        ("a blue square", BLUE, RED, "pairs.jsonl line 3"),
    ]
    assert len(read_preference_pairs(tmp_path, limit=1)) == 1


GOOD = {"prompt": "p", "preferred": "images/red.png", "other": "images/blue.jpg"}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"line 2: not valid JSON"),
        ({"prompt": "p", "preferred": "images/red.png"}, r"line 2: field 'other' .* missing"),
        ({**GOOD, "prompt": 3}, r"line 2: field 'prompt' must be a string, got 3"),
        ({**GOOD, "preferred": "images/gone.png"}, r"line 2: field 'preferred': no image file"),
        ({**GOOD, "other": "images/bad.png"}, r"line 2: other holds bytes PIL cannot open"),
    ],
    ids=["bad-json", "missing-field", "not-a-string", "missing-file", "not-an-image"],
)
def test_an_unreadable_line_names_the_file_line_and_field(
    tmp_path: Path, line: Any, message: str
) -> None:
    write_folder(tmp_path, [GOOD, line])
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "pairs.jsonl")) + " " + message):
        read_preference_pairs(tmp_path)


def test_a_path_without_pairs_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "gone"))):
        read_preference_pairs(tmp_path / "gone")
    with pytest.raises(ValueError, match=r"holds neither pairs\.jsonl nor \.parquet shards"):
        read_preference_pairs(tmp_path)
    ties = write_pickapic(tmp_path / "ties.parquet", [ROWS[1], ROWS[4]])
    with pytest.raises(ValueError, match=re.escape(str(ties)) + " holds no preference pair"):
        read_preference_pairs(ties)
    (tmp_path / "pairs.csv").write_text("prompt\n")
    with pytest.raises(ValueError, match=r"must be a \.parquet file"):
        read_preference_pairs(tmp_path / "pairs.csv")
    with pytest.raises(ValueError, match="limit=0"):
        read_preference_pairs(ties, limit=0)


def test_parquet_without_pyarrow_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = write_pickapic(tmp_path / "shard.parquet", ROWS)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match=re.escape("pip install 'ddpo[dpo]'")):
        read_preference_pairs(file)


# ---- the training transform -------------------------------------------------------------------


def test_images_are_resized_on_the_short_side_and_centre_cropped() -> None:
    stripes = Image.new("RGB", (90, 30), (255, 0, 0))  # red | green | blue thirds
    stripes.paste((0, 255, 0), (30, 0, 60, 30))
    stripes.paste((0, 0, 255), (60, 0, 90, 30))
    buffer = io.BytesIO()
    stripes.save(buffer, format="PNG")
    image = load_square_image(buffer.getvalue(), resolution=16)
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32
    inner = image[:, :, 2:-2]  # the middle third, less the bilinear seams
    torch.testing.assert_close(inner, torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1).expand_as(inner))
    gray = load_square_image(GRAY, resolution=8)  # a grayscale PNG becomes RGB
    assert gray.shape == (3, 8, 8)
    torch.testing.assert_close(gray, torch.full((3, 8, 8), 128 / 255))
    with pytest.raises(ValueError, match="resolution=0"):
        load_square_image(GRAY, resolution=0)


class Recording:
    """A policy whose ``encode_images`` is an average pool (no model), recording its calls."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def encode_images(self, images: Tensor) -> Tensor:
        self.calls.append(len(images))
        return torch.nn.functional.avg_pool2d(images, 4)


def test_encoding_batches_unique_images_and_names_an_undecodable_one() -> None:
    policy = Recording()
    pairs = [
        PreferencePair("a", RED, BLUE, "s row 0"),
        PreferencePair("b", GREEN, RED, "s row 1"),
        PreferencePair("c", YELLOW, GRAY, "s row 2"),
    ]
    out = encode_preference_pairs(policy, pairs, resolution=16, batch_size=2)
    assert policy.calls == [2, 2, 1]  # five distinct images, RED once
    assert out.prompts == ["a", "b", "c"]
    assert out.preferred.shape == out.other.shape == (3, 3, 4, 4)
    assert torch.equal(out.preferred[0], out.other[1])
    expected = torch.nn.functional.avg_pool2d(load_square_image(BLUE, resolution=16)[None], 4)
    assert torch.equal(out.other[0], expected[0])
    truncated = PreferencePair("d", RED, image_bytes((1, 2, 3), (64, 64), "JPEG")[:200], "s row 3")
    with pytest.raises(ValueError, match=r"s row 3 other: PIL cannot decode the image"):
        encode_preference_pairs(policy, [truncated], resolution=16)
    with pytest.raises(ValueError, match="object has no encode_images"):
        encode_preference_pairs(object(), pairs, resolution=16)
    with pytest.raises(ValueError, match="batch_size=0"):
        encode_preference_pairs(policy, pairs, resolution=16, batch_size=0)
    with pytest.raises(ValueError, match="cache_dir needs the policy's VAE"):
        encode_preference_pairs(policy, pairs, resolution=16, cache_dir="unused")


# ---- the tiny models --------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["ddpo-tiny-random", "ddpo-tiny-sd3-random"])
def policy(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A tiny policy of this module's own (a test changes and restores its VAE)."""
    yield load_policy(request.param)


def native_side(policy: Any) -> int:
    """The image side the tiny model samples at (its resolution, else the UNet's)."""
    resolution = getattr(policy, "resolution", None)
    if resolution is not None:
        return int(resolution[0])
    return int(policy.unet.config.sample_size) * int(policy.pipeline.vae_scale_factor)


def counting(policy: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    encode: Callable[[Tensor], Tensor] = policy.encode_images

    def encode_images(images: Tensor) -> Tensor:
        calls.append(len(images))
        return encode(images)

    monkeypatch.setattr(policy, "encode_images", encode_images)
    return calls


@pytest.mark.slow
def test_latents_are_encode_images_and_a_second_call_reads_the_cache(
    policy: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    side = native_side(policy)
    pairs = [PreferencePair("a", RED, BLUE, "s row 0"), PreferencePair("b", GRAY, RED, "s row 1")]
    with torch.no_grad():
        squares = [load_square_image(data, resolution=side) for data in (RED, BLUE)]
        direct = policy.encode_images(torch.stack(squares))
    calls = counting(policy, monkeypatch)
    cache = tmp_path / "cache"
    first = encode_preference_pairs(policy, pairs, resolution=side, batch_size=2, cache_dir=cache)
    assert calls == [2, 1] and len(list(cache.glob("*.safetensors"))) == 3
    assert first.prompts == ["a", "b"]
    assert first.preferred.shape == (2, *direct.shape[1:]) and first.preferred.device.type == "cpu"
    assert first.preferred.dtype == first.other.dtype == torch.float32
    torch.testing.assert_close(first.preferred[0], direct[0])
    torch.testing.assert_close(first.other[0], direct[1])
    assert torch.equal(first.other[1], first.preferred[0])

    second = encode_preference_pairs(policy, pairs, resolution=side, cache_dir=cache)
    assert calls == [2, 1]  # nothing encoded
    assert torch.equal(second.preferred, first.preferred) and torch.equal(second.other, first.other)

    smaller = encode_preference_pairs(policy, pairs, resolution=side // 2, cache_dir=cache)
    assert calls == [2, 1, 3]  # another resolution misses
    assert smaller.preferred.shape[-1] == first.preferred.shape[-1] // 2

    weight = next(policy.vae.parameters())
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.add_(0.01)
    try:
        changed = encode_preference_pairs(policy, pairs, resolution=side, cache_dir=cache)
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert calls == [2, 1, 3, 3]  # another VAE misses
    assert not torch.equal(changed.preferred, first.preferred)
    assert len(list(cache.glob("*"))) == 9  # no partial file left
