"""Offline preference pairs for Diffusion-DPO (Wallace et al., 2023, arXiv 2311.12908): each a
prompt, the image people preferred and the other one, read from disk, and their latents.

Two layouts are read:

- Pick-a-Pic (``yuvalkirstain/pickapic_v2``): a ``.parquet`` file, or a folder of ``.parquet``
  shards (read in the order of their names), with the columns ``caption`` (str), ``jpg_0`` and
  ``jpg_1`` (encoded image bytes) and ``label_0`` (1.0 when image 0 is preferred, 0.0 when image
  1 is, 0.5 for a tie). As the authors' training script does, ties are dropped and a row whose
  ``label_0`` is 0 is swapped so that the preferred image comes first. Read with ``pyarrow``
  (``pip install 'ddpo[dpo]'``), a batch of rows at a time, only these columns.
- A local folder holding ``pairs.jsonl``, one pair a line: ``{"prompt": ..., "preferred":
  "relative/path.png", "other": "relative/path.jpg"}``, the paths relative to the folder.

:func:`encode_preference_pairs` turns the pairs into the policy's final latents (its optional
``encode_images`` member, the inverse of ``decode``) after the authors' training transform
(resize the short side to the resolution, crop the centre square), optionally cached on disk
one safetensors file per image.
"""

import hashlib
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NamedTuple

import numpy as np
import torch
from jaxtyping import Float
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ddpo.policy import policy_option

PICKAPIC_COLUMNS: Final[tuple[str, ...]] = ("caption", "jpg_0", "jpg_1", "label_0")
"""The Pick-a-Pic columns a pair is read from (the others are not read)."""

PAIRS_FILE: Final[str] = "pairs.jsonl"
"""The file of a local folder of pairs, one JSON object a line."""

PAIRS_FIELDS: Final[tuple[str, ...]] = ("prompt", "preferred", "other")
"""The fields of a line of :data:`PAIRS_FILE` (the images' paths relative to its folder)."""

_ROWS_PER_BATCH = 64
"""Parquet rows read at a time (Pick-a-Pic's rows hold two images of about 0.5 MB each)."""

_CACHE_FORMAT = "ddpo-preference-latents-v1"
"""Part of every cache key: a change of the image transform changes it, missing old entries."""


@dataclass(frozen=True)
class PreferencePair:
    """One preference: a prompt, the preferred image and the other one (encoded image bytes, as
    stored: PNG, JPEG, ...), and where the pair was read (e.g. ``"shard.parquet row 12"``)."""

    prompt: str
    preferred: bytes = field(repr=False)
    other: bytes = field(repr=False)
    source: str


class PreferenceLatents(NamedTuple):
    """Encoded preference pairs: the prompts and the final latents of each pair's preferred and
    other image (float32, on the CPU), row ``i`` of each from pair ``i``."""

    prompts: list[str]
    preferred: Float[Tensor, "pairs channels height width"]
    other: Float[Tensor, "pairs channels height width"]


# ---- reading ----------------------------------------------------------------------------------


def _parquet() -> Any:
    """``pyarrow.parquet``, imported when a Parquet file is read."""
    try:
        import pyarrow.parquet as pq
    except ImportError as error:
        raise ImportError(
            "reading Pick-a-Pic Parquet shards needs pyarrow: pip install 'ddpo[dpo]'"
        ) from error
    return pq


def _check_image_bytes(value: Any, where: str, name: str) -> bytes:
    """``value`` as image bytes that PIL can open (a Hugging Face ``Image`` column's
    ``{"bytes": ...}`` struct is unwrapped).

    Raises:
        ValueError: naming ``where`` and ``name`` if it is null, not bytes, or not an image.
    """
    if isinstance(value, dict) and "bytes" in value:
        value = value["bytes"]
    if value is None:
        raise ValueError(f"{where}: {name} is null, expected encoded image bytes")
    if not isinstance(value, bytes):
        raise ValueError(f"{where}: {name} must be encoded image bytes, got {type(value).__name__}")
    try:
        with Image.open(io.BytesIO(value)) as image:
            image.verify()
    except Exception as error:  # PIL raises several kinds (UnidentifiedImageError, SyntaxError)
        raise ValueError(f"{where}: {name} holds bytes PIL cannot open ({error})") from error
    return value


def _pickapic_pair(
    columns: dict[str, list[Any]], offset: int, file: Path, row: int
) -> PreferencePair | None:
    """Row ``offset`` of a batch of Pick-a-Pic columns, row ``row`` of ``file``, as a pair,
    preferred first (``None`` for a tie)."""
    where = f"{file} row {row}"
    label = columns["label_0"][offset]
    if isinstance(label, bool) or label not in (0, 0.5, 1):
        raise ValueError(
            f"{where}: label_0 must be 1 (jpg_0 preferred), 0 (jpg_1 preferred) or 0.5 (a tie), "
            f"got {label!r}"
        )
    if label == 0.5:
        return None
    prompt = columns["caption"][offset]
    if not isinstance(prompt, str):
        raise ValueError(f"{where}: caption must be a string, got {prompt!r}")
    first = _check_image_bytes(columns["jpg_0"][offset], where, "jpg_0")
    second = _check_image_bytes(columns["jpg_1"][offset], where, "jpg_1")
    preferred, other = (first, second) if label == 1 else (second, first)
    return PreferencePair(prompt, preferred, other, f"{file.name} row {row}")


def _read_parquet(file: Path, limit: int | None) -> Iterator[PreferencePair]:
    """The non-tied pairs of a Pick-a-Pic Parquet file, preferred first, at most ``limit``."""
    pq = _parquet()
    try:
        parquet = pq.ParquetFile(file)
    except Exception as error:  # pyarrow's ArrowInvalid, OSError
        raise ValueError(f"{file} is not a readable Parquet file ({error})") from error
    with parquet:  # closed when reading stops (at ``limit``, or on an error)
        names = list(parquet.schema_arrow.names)
        for column in PICKAPIC_COLUMNS:
            if column not in names:
                raise ValueError(
                    f"{file} row 0: no column {column!r} (Pick-a-Pic's layout has "
                    f"{', '.join(PICKAPIC_COLUMNS)}; the file has {names})"
                )
        found, first_row = 0, 0
        batches = parquet.iter_batches(batch_size=_ROWS_PER_BATCH, columns=list(PICKAPIC_COLUMNS))
        for batch in batches:
            columns = {name: batch.column(name).to_pylist() for name in PICKAPIC_COLUMNS}
            for offset in range(batch.num_rows):
                pair = _pickapic_pair(columns, offset, file, first_row + offset)
                if pair is None:
                    continue
                yield pair
                found += 1
                if found == limit:
                    return
            first_row += batch.num_rows


def _read_pairs_file(file: Path, limit: int | None) -> Iterator[PreferencePair]:
    """The pairs of a ``pairs.jsonl`` file (blank lines skipped), at most ``limit``."""
    folder, found = file.parent, 0
    with file.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{file} line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not valid JSON ({error.msg})") from error
            if not isinstance(record, dict):
                raise ValueError(f"{where}: must be a JSON object with {PAIRS_FIELDS}")
            for name in PAIRS_FIELDS:
                if not isinstance(record.get(name), str):
                    got = f"got {record[name]!r}" if name in record else "it is missing"
                    raise ValueError(f"{where}: field {name!r} must be a string, {got}")
            images = []
            for name in ("preferred", "other"):
                image_path = folder / record[name]
                if not image_path.is_file():
                    raise ValueError(f"{where}: field {name!r}: no image file {image_path}")
                images.append(_check_image_bytes(image_path.read_bytes(), where, name))
            yield PreferencePair(
                record["prompt"], images[0], images[1], f"{file.name} line {number}"
            )
            found += 1
            if found == limit:
                return


def _shards(folder: Path) -> list[Path]:
    """The ``.parquet`` files of ``folder``, sorted by name."""
    return sorted(
        (p for p in folder.iterdir() if p.suffix == ".parquet" and p.is_file()),
        key=lambda p: p.name,
    )


def read_preference_pairs(
    path: str | os.PathLike[str], *, limit: int | None = None
) -> list[PreferencePair]:
    """The preference pairs stored at ``path``, in order, preferred image first.

    Args:
        path: a Pick-a-Pic ``.parquet`` file, a folder of them (read in the order of their
            names), or a folder holding ``pairs.jsonl`` (see the module's docstring).
        limit: the most pairs to read (``None``: all); ties do not count, and reading stops
            once ``limit`` pairs are found.

    Returns:
        The pairs, each with its source (``"<file name> row <i>"``, rows counted from 0 in each
        Parquet file; ``"pairs.jsonl line <n>"``, lines counted from 1).

    Raises:
        FileNotFoundError: naming ``path`` if it does not exist.
        ValueError: naming ``limit`` if it is not a positive int; naming ``path`` if it is
            neither a ``.parquet`` file nor a folder of them or with ``pairs.jsonl``, or holds no
            pair (only ties); naming the file, the row (line) and the column (field) of a row
            that cannot be read: a missing column, a null or non-string caption, a label other
            than 1, 0 and 0.5, null bytes, bytes that PIL cannot open, a missing image file,
            a line that is not JSON.
        ImportError: if a Parquet file is to be read and pyarrow is not installed.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got limit={limit!r}")
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"no preference data at {root}: the path does not exist")
    if root.is_dir() and (root / PAIRS_FILE).is_file():
        pairs = list(_read_pairs_file(root / PAIRS_FILE, limit))
    elif root.is_dir():
        shards = _shards(root)
        if not shards:
            raise ValueError(f"{root} holds neither {PAIRS_FILE} nor .parquet shards")
        pairs = []
        for shard in shards:
            remaining = None if limit is None else limit - len(pairs)
            if remaining == 0:
                break
            pairs += _read_parquet(shard, remaining)
    elif root.suffix == ".parquet":
        pairs = list(_read_parquet(root, limit))
    else:
        raise ValueError(
            f"path must be a .parquet file or a folder of them or with {PAIRS_FILE}, got {root}"
        )
    if not pairs:
        raise ValueError(f"{root} holds no preference pair (ties are dropped)")
    return pairs


# ---- encoding ---------------------------------------------------------------------------------


def load_square_image(data: bytes, *, resolution: int) -> Float[Tensor, "3 side side"]:
    """Encoded image bytes as an RGB float image in ``[0, 1]`` of ``resolution x resolution``
    pixels: the short side resized (bilinear) to ``resolution``, the long side in proportion
    (rounded down), then the centre square cropped, as the Diffusion-DPO training transform
    (torchvision's ``Resize(resolution)`` then ``CenterCrop(resolution)``).

    Raises:
        ValueError: naming ``resolution`` if it is not a positive int; if PIL cannot decode
            ``data``.
    """
    _check_positive(resolution, "resolution")
    try:
        with Image.open(io.BytesIO(data)) as opened:
            image = opened.convert("RGB")
    except Exception as error:  # PIL raises several kinds for broken data
        raise ValueError(f"PIL cannot decode the image ({error})") from error
    width, height = image.size
    if width <= height:
        size = (resolution, int(resolution * height / width))
    else:
        size = (int(resolution * width / height), resolution)
    if size != image.size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    left = round((size[0] - resolution) / 2.0)
    top = round((size[1] - resolution) / 2.0)
    image = image.crop((left, top, left + resolution, top + resolution))
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))
    return pixels.permute(2, 0, 1).to(torch.float32) / 255.0


def _check_positive(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {name}={value!r}")


def _vae_identity(policy: Any) -> str:
    """A digest of what makes the policy's latents: the policy's class, its VAE's class and
    config (without diffusers' private keys such as ``_name_or_path``), and the dtype and values
    of the VAE's first parameter tensor.

    Raises:
        ValueError: naming ``cache_dir`` if the policy has no ``vae`` module.
    """
    vae = getattr(policy, "vae", None)
    if not isinstance(vae, nn.Module):
        raise ValueError(
            f"cache_dir needs the policy's VAE (a module policy.vae) to key its cache; "
            f"{type(policy).__name__} has none: pass cache_dir=None"
        )
    config = {k: v for k, v in dict(getattr(vae, "config", {})).items() if not k.startswith("_")}
    digest = hashlib.sha256()
    described = {"policy": type(policy).__name__, "vae": type(vae).__name__, "config": config}
    digest.update(json.dumps(described, sort_keys=True, default=str).encode())
    first = next(vae.parameters(), None)
    if first is not None:
        digest.update(str(first.dtype).encode())
        digest.update(first.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def _cache_key(identity: str, resolution: int, data: bytes) -> str:
    digest = hashlib.sha256()
    for part in (_CACHE_FORMAT, identity, str(resolution)):
        digest.update(part.encode())
        digest.update(b"\0")
    digest.update(data)
    return digest.hexdigest()


def _load_cached(file: Path) -> Tensor:
    try:
        return load_file(file)["latents"]
    except Exception as error:  # safetensors' SafetensorError, KeyError, OSError
        raise ValueError(f"cache file {file} cannot be read ({error}); delete it") from error


def _save_cached(file: Path, latents: Tensor) -> None:
    """Write ``latents`` to ``file`` through a temporary sibling renamed into place (a reader
    never sees half a file)."""
    partial = file.with_name(f".{file.stem}.{os.getpid()}.partial")
    save_file({"latents": latents.clone().contiguous()}, partial)
    os.replace(partial, file)


def encode_preference_pairs(
    policy: Any,
    pairs: Sequence[PreferencePair],
    *,
    resolution: int,
    batch_size: int = 8,
    cache_dir: str | os.PathLike[str] | None = None,
) -> PreferenceLatents:
    """The final latents of each pair's images through the policy's ``encode_images`` (the
    inverse of ``decode``, see `ddpo.policy.PolicyOptions`), as Diffusion-DPO trains on them.

    Each image is decoded with PIL, converted to RGB, resized and centre-cropped to
    ``resolution x resolution`` (:func:`load_square_image`), and encoded without gradients,
    ``batch_size`` images a call; an image that occurs several times is encoded once.

    Args:
        policy: a policy with ``encode_images``.
        pairs: the pairs (:func:`read_preference_pairs`).
        resolution: the square images' side in pixels (a multiple of the family's size
            multiple, e.g. the VAE's factor).
        batch_size: images per ``encode_images`` call.
        cache_dir: a folder of cached latents, one safetensors file per image named by a
            SHA-256 of the image bytes, ``resolution`` and the VAE's identity (the policy's and
            the VAE's classes, the VAE's config and its first parameter tensor), so that a later
            call encodes only images it has not seen, and a changed VAE or resolution misses.
            ``None``: no cache.

    Returns:
        The prompts and the preferred and other latents, float32 on the CPU, row ``i`` from
        ``pairs[i]``.

    Raises:
        ValueError: naming ``encode_images`` if the policy has none; naming ``pairs``,
            ``resolution`` or ``batch_size`` if empty or not a positive int; naming a pair's
            source if PIL cannot decode its image; ``cache_dir`` with a policy without ``vae``.
    """
    encode = policy_option(policy, "encode_images")
    if encode is None:
        raise ValueError(
            f"{type(policy).__name__} has no encode_images (the inverse of decode, an optional "
            "policy member, see ddpo.policy.PolicyOptions): it cannot encode preference pairs"
        )
    _check_positive(resolution, "resolution")
    _check_positive(batch_size, "batch_size")
    if len(pairs) == 0:
        raise ValueError("pairs is empty: there is nothing to encode")
    cache = None if cache_dir is None else Path(cache_dir)
    identity = ""
    if cache is not None:
        identity = _vae_identity(policy)
        cache.mkdir(parents=True, exist_ok=True)
    keys = [
        (_cache_key(identity, resolution, p.preferred), _cache_key(identity, resolution, p.other))
        for p in pairs
    ]
    latents: dict[str, Tensor] = {}
    todo: dict[str, tuple[bytes, str]] = {}
    for pair, pair_keys in zip(pairs, keys, strict=True):
        for name, data, key in zip(
            ("preferred", "other"), (pair.preferred, pair.other), pair_keys, strict=True
        ):
            if key in latents or key in todo:
                continue
            cached = None if cache is None else cache / f"{key}.safetensors"
            if cached is not None and cached.is_file():
                latents[key] = _load_cached(cached)
            else:
                todo[key] = (data, f"{pair.source} {name}")
    missing = list(todo.items())
    for start in range(0, len(missing), batch_size):
        chunk = missing[start : start + batch_size]
        images = []
        for _, (data, where) in chunk:
            try:
                images.append(load_square_image(data, resolution=resolution))
            except ValueError as error:
                raise ValueError(f"{where}: {error}") from error
        with torch.no_grad():
            encoded = encode(torch.stack(images)).detach().to("cpu", torch.float32)
        for (key, _), row in zip(chunk, encoded, strict=True):
            latents[key] = row
            if cache is not None:
                _save_cached(cache / f"{key}.safetensors", row)
    return PreferenceLatents(
        [p.prompt for p in pairs],
        torch.stack([latents[preferred] for preferred, _ in keys]),
        torch.stack([latents[other] for _, other in keys]),
    )


__all__ = [
    "PAIRS_FIELDS",
    "PAIRS_FILE",
    "PICKAPIC_COLUMNS",
    "PreferenceLatents",
    "PreferencePair",
    "encode_preference_pairs",
    "load_square_image",
    "read_preference_pairs",
]
