"""``write_clip_tokenizer``: every listed word is one token, whatever words share."""

import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import CLIPTokenizer

from ddpo.adapters.common.tokenizer import write_clip_tokenizer

WORDS = st.lists(
    st.text(alphabet="abcdez", min_size=1, max_size=7), min_size=1, max_size=40, unique=True
)


@settings(max_examples=25, deadline=None)
@given(words=WORDS)
def test_every_word_is_a_single_token(words: list[str]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        write_clip_tokenizer(folder, words)
        tokenizer = CLIPTokenizer.from_pretrained(folder)
    for word in words:
        ids = tokenizer(word).input_ids
        assert len(ids) == 3, (word, tokenizer.convert_ids_to_tokens(ids))
    sentence = " ".join(words)
    assert len(tokenizer(sentence).input_ids) == len(words) + 2


def test_words_sharing_inner_pairs() -> None:
    """'brown' before 'zebra' used to split 'zebra' into 'ze', 'br', 'a'."""
    with tempfile.TemporaryDirectory() as folder:
        write_clip_tokenizer(folder, ["brown", "zebra", "a", "bra"])
        tokenizer = CLIPTokenizer.from_pretrained(folder)
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("a brown zebra bra").input_ids)
    assert tokens[1:-1] == ["a</w>", "brown</w>", "zebra</w>", "bra</w>"]
