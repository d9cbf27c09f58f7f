"""Write a CLIP byte-level BPE tokenizer (vocab.json, merges.txt) for tiny models, offline.

Stable Diffusion pipelines expect a ``CLIPTokenizer``; with no model hub we write its vocabulary
ourselves: every byte (alone and word-final), plus merges that make each given word one token.
Words not in the list still tokenize, byte by byte, so any prompt is valid input.
"""

import itertools
import json
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
END_OF_WORD = "</w>"


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _word_symbols(word: str) -> list[str]:
    table = byte_to_unicode()
    chars = [table[b] for b in word.encode("utf-8")]
    chars[-1] += END_OF_WORD
    return chars


def apply_merges(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding of one word: repeatedly join the adjacent pair of lowest merge rank."""
    while len(symbols) > 1:
        pairs = [(ranks.get((a, b)), i) for i, (a, b) in enumerate(itertools.pairwise(symbols))]
        ranked = [(r, i) for r, i in pairs if r is not None]
        if not ranked:
            break
        best = min(ranked)[0]
        first, second = next((symbols[i], symbols[i + 1]) for r, i in ranked if r == best)
        merged: list[str] = []
        i = 0
        while i < len(symbols):
            if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
                merged.append(first + second)
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def build_clip_vocab(words: Iterable[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merge list under which each of ``words`` (lower-cased) is a single token.

    Returns:
        ``(vocab, merges)``: token -> id, and the ordered BPE merges.

    Raises:
        ValueError: if a word is empty or contains whitespace.
    """
    base = list(byte_to_unicode().values())
    tokens = [*base, *(c + END_OF_WORD for c in base)]
    seen = set(tokens)
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for raw in words:
        word = raw.strip().lower()
        if not word or any(ch.isspace() for ch in word):
            raise ValueError(f"words must be non-empty and without whitespace, got {raw!r}")
        # Merges of earlier words may already split this word; BPE applies merges by rank, so
        # the new merges (ranked after all existing ones) join whatever those leave, left to
        # right. They come after every earlier word's merges and so cannot change its tokens.
        symbols = apply_merges(_word_symbols(word), ranks)
        while len(symbols) > 1:
            pair = (symbols[0], symbols[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            if pair[0] + pair[1] not in seen:  # every merge result must be in the vocabulary
                seen.add(pair[0] + pair[1])
                tokens.append(pair[0] + pair[1])
            symbols = apply_merges(symbols, ranks)
    tokens += [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def write_clip_tokenizer(
    folder: str | Path, words: Iterable[str], *, model_max_length: int = 77
) -> Path:
    """Write a ``CLIPTokenizer`` folder (``from_pretrained``-loadable) with ``words`` as tokens.

    Args:
        folder: destination; created if missing.
        words: words to make single tokens (e.g. a prompt grammar's vocabulary).
        model_max_length: the padded prompt length, 77 as in Stable Diffusion.

    Returns:
        The folder's path.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_clip_vocab(words)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (out / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": True,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    return out
