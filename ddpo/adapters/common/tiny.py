"""What the tiny test models of every family share: the vocabulary, the tokenizers, the cache
folder and the atomic folder builder."""

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    CLIPTokenizer,
    T5Config,
)

from ddpo.adapters.common.tokenizer import write_clip_tokenizer

TINY_WORDS: tuple[str, ...] = (
    # articles, prepositions and glue words of simple prompts
    "a", "an", "the", "of", "on", "in", "with", "and", "photo", "picture", "painting", "image",
    "drawing", "background", "small", "large", "big", "tiny", "one", "two", "three", "four",
    # colours
    "red", "green", "blue", "yellow", "orange", "purple", "pink", "black", "white", "gray",
    "brown", "cyan",
    # shapes
    "circle", "square", "triangle", "star", "cross", "ring", "disk", "ball", "box", "shape",
    "shapes",
    # animals
    "cat", "dog", "horse", "monkey", "rabbit", "zebra", "spider", "bird", "sheep", "deer", "cow",
    "goat", "lion", "tiger", "bear", "raccoon", "fox", "wolf", "lizard", "beetle", "ant",
    "butterfly", "fish", "shark", "whale", "dolphin", "squirrel", "mouse", "rat", "snake",
    "turtle", "frog", "chicken", "duck", "goose", "bee", "pig", "turkey", "fly", "llama",
    "camel", "bat", "gorilla", "hedgehog", "kangaroo",
)  # fmt: skip
"""The words the tiny tokenizer holds as single tokens (any other text still tokenizes)."""


def tiny_tokenizer(
    words: Iterable[str], *, model_max_length: int, folder: str | Path | None = None
) -> CLIPTokenizer:
    """A CLIP tokenizer holding ``words`` as single tokens, written to ``folder`` and loaded.

    ``folder`` defaults to a temporary folder, removed again once the tokenizer is loaded.
    """
    if folder is None:
        with tempfile.TemporaryDirectory() as tmp:
            write_clip_tokenizer(tmp, words, model_max_length=model_max_length)
            return CLIPTokenizer.from_pretrained(tmp)
    write_clip_tokenizer(folder, words, model_max_length=model_max_length)
    return CLIPTokenizer.from_pretrained(folder)


def default_cache_dir() -> Path:
    """``$DDPO_CACHE_DIR`` if set, else ``~/.cache/ddpo``."""
    env = os.environ.get("DDPO_CACHE_DIR", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ddpo"


def build_pipeline_folder(
    target: Path,
    make_components: Callable[[], dict[str, Any]],
    save: Callable[[Mapping[str, Any], Path], None],
) -> Path:
    """Save ``make_components()`` with ``save`` (the family's pipeline
    class's ``save_pretrained``) to ``target`` unless it is there.

    The folder is written into a temporary sibling and renamed into place, so concurrent
    processes never see a half-written model; the loser of a race discards its copy.

    Returns:
        ``target``, a folder that ``StableDiffusionPipeline.from_pretrained`` loads.
    """
    if (target / "model_index.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        save(make_components(), staging)
        check_complete_folder(staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "model_index.json").is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def check_complete_folder(folder: Path) -> None:
    """RuntimeError unless every component ``folder/model_index.json`` lists was written.

    A saver that writes on the main process only (transformers inside a torch process group)
    leaves the other processes' copies without their text encoders; such a copy must never be
    renamed into the cache."""
    index = json.loads((folder / "model_index.json").read_text())
    missing = [
        name
        for name, entry in index.items()
        if not name.startswith("_")
        and isinstance(entry, list)
        and entry[0] is not None
        and not any((folder / name).iterdir() if (folder / name).is_dir() else ())
    ]
    if missing:
        raise RuntimeError(
            f"building the tiny model {folder.name} wrote no files for {missing} (a saver "
            "that writes on the main process only? build it before starting a process group)"
        )


def tiny_t5_config(vocab_size: int, width: int, config_class: type[Any] = T5Config) -> Any:
    """A tiny T5 encoder's config: 2 layers, 4 heads of 8, feed-forward ``2 * width``
    (``config_class``: T5's, or a variant's with the same fields, e.g. ``UMT5Config``)."""
    return config_class(
        vocab_size=vocab_size,
        d_model=width,
        d_kv=8,
        d_ff=2 * width,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
    )


def tiny_t5_tokenizer(words: tuple[str, ...] = TINY_WORDS, *, model_max_length: int = 256) -> Any:
    """A ``T5TokenizerFast`` whose Unigram vocabulary holds each of ``words`` as one piece
    (``▁word``), every lower-case letter and digit (so other words still tokenize), and T5's
    ``<pad>`` (0), ``</s>`` (1), ``<unk>`` (2); no sentinel tokens."""
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    seen = {p for p, _ in pieces}
    for word in words:
        piece = "▁" + word.strip().lower()
        if piece not in seen:
            seen.add(piece)
            pieces.append((piece, -1.0))
    pieces += [(c, -10.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789" if c not in seen]
    backend = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        ]
    )
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    backend.post_processor = processors.TemplateProcessing(
        single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"], special_tokens=[("</s>", 1)]
    )
    tokenizer = _t5_tokenizer_class()(
        tokenizer_object=backend,
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_ids=0,
        model_max_length=model_max_length,
    )
    with tempfile.TemporaryDirectory() as tmp:  # through the on-disk format, as loaded later
        tokenizer.save_pretrained(tmp)
        return _t5_tokenizer_class().from_pretrained(tmp)


def _t5_tokenizer_class() -> Any:
    """transformers' ``T5TokenizerFast`` (the tokenizers-backed ``T5Tokenizer`` since v5)."""
    return transformers.T5TokenizerFast  # type: ignore[attr-defined,unused-ignore]
