"""The OCR reward: target extraction and the edit-distance score written out, and the real
RapidOCR models (shipped in the wheel) on text the test renders with PIL."""

import sys
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from ddpo.rewards.ocr import OcrReward, normalize_text, ocr_reward, quoted_text, text_similarity

pytest.importorskip("rapidocr")


def _render(text: str, size: tuple[int, int] = (320, 96)) -> torch.Tensor:
    """Black text on a white canvas as a float (3, H, W) tensor in [0, 1]."""
    image = Image.new("RGB", size, "white")
    if text:
        font = ImageFont.load_default(size=36)
        ImageDraw.Draw(image).text((12, 26), text, fill="black", font=font)
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255


def test_quoted_text_and_normalisation() -> None:
    assert quoted_text('a sign that says "Open Late" at night') == "Open Late"
    assert quoted_text('"first" and "second"') == "first"
    assert quoted_text("a poster reading “Bonjour”") == "Bonjour"
    assert quoted_text("a cat") is None
    assert quoted_text('an odd " quote') is None
    assert normalize_text(" Hello\tWorld \n") == "helloworld"


@pytest.mark.parametrize(
    ("read", "target", "expected"),
    [
        ("Hello World", "hello world", 1.0),  # case and spaces ignored
        ("Sale: Hello World!", "Hello World", 1.0),  # the target inside the read text
        ("Helo World", "Hello World", 1 - 1 / 10),  # one deletion of 10 characters
        ("Jello Wirld", "Hello World", 1 - 2 / 10),  # two substitutions
        ("", "Hello", 0.0),  # nothing read: distance 5 of 5
        ("completely different and long", "Hi", 0.0),  # distance capped at the length
    ],
)
def test_text_similarity_is_one_minus_capped_normalised_distance(
    read: str, target: str, expected: float
) -> None:
    assert text_similarity(read, target) == pytest.approx(expected)


def test_empty_target_is_an_error() -> None:
    with pytest.raises(ValueError, match="target must have a non-whitespace character"):
        text_similarity("abc", "  ")


class _Engine:
    """A stand-in OCR engine that returns fixed lines and records its calls."""

    def __init__(self, lines: tuple[str, ...]) -> None:
        self.lines = lines
        self.calls: list[np.ndarray] = []

    def __call__(self, image: np.ndarray) -> Any:
        self.calls.append(image)
        return type("Out", (), {"txts": self.lines or None})()


def test_prompts_without_quoted_text_error_before_ocr_or_score_zero() -> None:
    images = torch.rand(2, 3, 16, 16)
    prompts = ['a sign "Hi"', "a cat"]
    engine = _Engine(("hi",))
    with pytest.raises(ValueError, match=r"indices \[1\] have none: \['a cat'\]"):
        OcrReward(engine)(images, prompts, None)
    assert engine.calls == []  # checked before any OCR ran
    rewards, metadata = OcrReward(engine, missing_text="zero")(images, prompts, None)
    assert rewards.tolist() == [1.0, 0.0]
    assert metadata == {"ocr_text": ["hi", ""], "target_text": ["Hi", ""]}
    assert len(engine.calls) == 1
    # the engine gets the image as BGR uint8 (OpenCV's order), lines are joined by spaces
    image = torch.zeros(1, 3, 4, 4)
    image[:, 0] = 1.0  # pure red
    two = _Engine(("Hel", "lo"))
    rewards, metadata = OcrReward(two)(image, ['"Hel lo"'], None)
    assert two.calls[0][0, 0].tolist() == [0, 0, 255]
    assert metadata["ocr_text"] == ["Hel lo"] and rewards.tolist() == [1.0]


def test_bad_arguments_fail_before_loading() -> None:
    with pytest.raises(ValueError, match="min_confidence must be in"):
        ocr_reward(min_confidence=1.5)
    with pytest.raises(ValueError, match="num_threads must be positive, got 0"):
        ocr_reward(num_threads=0)
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda"):
        ocr_reward(device="meta")
    with pytest.raises(ValueError, match="prompts has 1 entries for a batch of 2"):
        OcrReward(_Engine(()))(torch.rand(2, 3, 8, 8), ['"a"'], None)


@pytest.mark.parametrize("module", ["rapidocr", "rapidfuzz", "onnxruntime"])
def test_missing_packages_name_the_extra(module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    if module == "rapidfuzz":
        monkeypatch.setitem(sys.modules, "rapidfuzz.distance", None)
    with pytest.raises(ImportError, match=r"pip install 'ddpo\[ocr\]'"):
        ocr_reward()


@pytest.mark.slow
def test_reads_rendered_text_with_the_packaged_models() -> None:
    reward = ocr_reward(num_threads=1)
    images = torch.stack([_render("Hello World"), _render("Goodbye"), _render("")])
    prompt = 'a white sign with the words "Hello World"'
    rewards, metadata = reward(images, [prompt] * 3, None)
    assert rewards.shape == (3,) and rewards.dtype == torch.float32
    assert rewards[0] > 0.9  # the right text
    assert rewards[1] < 0.5  # another text
    assert rewards[2] == 0.0  # no text
    assert metadata["target_text"] == ["Hello World"] * 3
    assert normalize_text(metadata["ocr_text"][0]) == "helloworld"
    assert metadata["ocr_text"][2] == ""
    # each reward is the written-out score of what was read
    for value, read in zip(rewards.tolist(), metadata["ocr_text"], strict=True):
        assert value == pytest.approx(text_similarity(read, "Hello World"))
    # uint8 and PIL input read the same
    uint8 = (images[:1] * 255).round().to(torch.uint8)
    pil = [Image.fromarray(uint8[0].permute(1, 2, 0).numpy())]
    assert reward(uint8, [prompt], None)[0].tolist() == rewards[:1].tolist()
    assert reward(pil, [prompt], None)[0].tolist() == rewards[:1].tolist()
