"""The programmatic prompt-alignment reward on rendered and hand-drawn images."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from ddpo.data import PALETTE, batches, caption, parse_prompt
from ddpo.rewards.alignment import (
    alignment_accuracy,
    alignment_prompt_fn,
    alignment_reward_fn,
    alignment_scores,
)


def _rgb(name: str) -> tuple[int, int, int]:
    r, g, b = PALETTE[name]
    return round(r * 255), round(g * 255), round(b * 255)


def _draw(
    shape: str, colour: str, background: str, center: tuple[int, int] = (32, 32)
) -> torch.Tensor:
    """A 64x64 image drawn by hand with PIL (not with the package's renderer)."""
    image = Image.new("RGB", (64, 64), _rgb(background))
    draw = ImageDraw.Draw(image)
    x, y = center
    fill = _rgb(colour)
    if shape == "circle":
        draw.ellipse([x - 10, y - 10, x + 10, y + 10], fill=fill)
    elif shape == "square":
        draw.rectangle([x - 9, y - 9, x + 9, y + 9], fill=fill)
    elif shape == "triangle":
        draw.polygon([(x, y - 13), (x - 11, y + 7), (x + 11, y + 7)], fill=fill)
    elif shape == "cross":
        draw.rectangle([x - 11, y - 4, x + 11, y + 4], fill=fill)
        draw.rectangle([x - 4, y - 11, x + 4, y + 11], fill=fill)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)


HAND = [
    ("circle", "red", "blue", (32, 32), "a red circle in the center on a blue background"),
    ("square", "green", "white", (18, 32), "a green square on the left on a white background"),
    ("triangle", "yellow", "black", (46, 32), "a yellow triangle on the right"),
    ("cross", "purple", "gray", (32, 18), "a purple cross at the top on a gray background"),
    ("circle", "orange", "green", (32, 46), "an orange circle at the bottom"),
    ("square", "blue", "yellow", (32, 32), "a blue square"),
]


def test_hand_drawn_images_with_their_own_prompt_score_high() -> None:
    images = torch.stack([_draw(s, c, b, xy) for s, c, b, xy, _ in HAND])
    prompts = [p for *_, p in HAND]
    rewards, info = alignment_reward_fn(images, prompts, [{} for _ in prompts])
    assert rewards.shape == (len(HAND),)
    assert bool((rewards > 0.75).all()), rewards
    assert bool(info["accuracy"].all())


@pytest.mark.parametrize(("shape", "colour", "background", "xy", "prompt"), HAND)
def test_wrong_colour_or_shape_scores_low(
    shape: str, colour: str, background: str, xy: tuple[int, int], prompt: str
) -> None:
    image = _draw(shape, colour, background, xy)[None]
    right = parse_prompt(prompt)
    other_colour = "blue" if colour != "blue" else "red"
    if right["background"] == other_colour:
        other_colour = "orange"
    other_shape = {"circle": "square", "square": "circle", "triangle": "cross", "cross": "circle"}
    wrong_colour = {**right, "colour": other_colour}
    wrong_shape = {**right, "shape": other_shape[shape]}
    good = alignment_scores(image, [right])
    bad_c = alignment_scores(image, [wrong_colour])
    bad_s = alignment_scores(image, [wrong_shape])
    assert bool(good.correct[0]) and not bool(bad_c.correct[0]) and not bool(bad_s.correct[0])
    assert float(bad_c.colour[0]) < 0.1 < 0.8 < float(good.colour[0])
    assert float(bad_s.shape[0]) < 0.5 * float(good.shape[0])
    assert float(good.reward[0]) - float(bad_c.reward[0]) > 0.25
    assert float(good.reward[0]) - float(bad_s.reward[0]) > 0.15


def test_wrong_position_and_background_lower_the_reward() -> None:
    image = _draw("circle", "red", "blue", (18, 32))[None]
    meta = {"colour": "red", "shape": "circle", "position": "left", "background": "blue"}
    good = alignment_scores(image, [meta])
    bad_p = alignment_scores(image, [{**meta, "position": "right"}])
    bad_b = alignment_scores(image, [{**meta, "background": "white"}])
    assert bool(good.correct[0]) and not bool(bad_p.correct[0]) and not bool(bad_b.correct[0])
    assert float(bad_p.position[0]) < 0.1 < 0.8 < float(good.position[0])
    assert float(bad_b.background[0]) < 0.1 < 0.8 < float(good.background[0])
    assert float(good.reward[0]) > float(bad_p.reward[0]) + 0.1
    assert float(good.reward[0]) > float(bad_b.reward[0]) + 0.1


def test_blank_and_noise_images_score_low() -> None:
    metas = [
        {"colour": "red", "shape": s, "position": None, "background": None}
        for s in ("circle", "square", "triangle", "cross")
    ]
    gen = torch.Generator().manual_seed(0)
    for images in (
        torch.full((4, 3, 64, 64), 0.5),
        torch.zeros(4, 3, 64, 64),
        torch.rand(4, 3, 64, 64, generator=gen),
        torch.rand(4, 3, 8, 8, generator=gen).repeat_interleave(8, -1).repeat_interleave(8, -2),
    ):
        rewards, info = alignment_reward_fn(images, [caption(m) for m in metas], metas)
        assert float(rewards.max()) < 0.35, rewards
        assert not bool(info["accuracy"].any())


def test_rendered_data_is_aligned_and_shuffled_prompts_are_not() -> None:
    images, captions, metas = next(batches(96, seed=11, split="all"))
    rewards, info = alignment_reward_fn(images, captions, metas)
    assert float(info["accuracy"].float().mean()) >= 0.95
    assert float(rewards.mean()) > 0.8
    shift = [metas[(i + 1) % 96] for i in range(96)]
    shuffled, info_s = alignment_reward_fn(images, [caption(m) for m in shift], shift)
    assert float(info_s["accuracy"].float().mean()) < 0.15
    assert float(shuffled.mean()) < float(rewards.mean()) - 0.4


def test_prompts_are_parsed_when_metadata_is_missing_and_batches_equal_singles() -> None:
    images, captions, metas = next(batches(8, seed=2, split="all"))
    with_meta, _ = alignment_reward_fn(images, captions, metas)
    parsed, _ = alignment_reward_fn(images, captions, None)
    torch.testing.assert_close(with_meta, parsed)
    singles = torch.cat(
        [alignment_reward_fn(images[i : i + 1], [c], None)[0] for i, c in enumerate(captions)]
    )
    torch.testing.assert_close(with_meta, singles, atol=1e-5, rtol=1e-5)


def test_other_sizes_dtypes_and_bounds() -> None:
    images, _, metas = next(batches(6, seed=3, split="all"))
    base = alignment_scores(images, metas)
    assert bool(base.correct.all())
    big = torch.nn.functional.interpolate(images, size=(128, 128), mode="nearest")
    assert bool(alignment_scores(big, metas).correct.all())
    as_uint8 = (images * 255).round().to(torch.uint8)
    assert alignment_accuracy(as_uint8, metas) == alignment_accuracy(images, metas)
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        x = torch.rand(6, 3, 64, 64, generator=gen) ** 3
        scores = alignment_scores(x, metas)
        assert bool(((scores.reward >= 0) & (scores.reward <= 1)).all())


def test_reward_metadata_reports_named_attributes_only() -> None:
    images, captions, metas = next(batches(16, seed=5, split="all"))
    _, info = alignment_reward_fn(images, captions, metas)
    assert set(info) == {"colour", "shape", "position", "background", "accuracy"}
    for key in info:  # one value per image: the run summary averages each per epoch
        assert info[key].shape == (16,)
    assert info["accuracy"].dtype == torch.bool
    assert bool((info["accuracy"] == alignment_scores(images, metas).correct).all())
    named = torch.tensor([m["position"] is not None for m in metas])
    assert bool((info["position"].isnan() == ~named).all())
    assert not bool(info["colour"].isnan().any())


def test_bad_input_raises() -> None:
    images, captions, metas = next(batches(2, seed=0))
    with pytest.raises(ValueError, match="images"):
        alignment_reward_fn(images[:, :2], captions, metas)
    with pytest.raises(ValueError, match="prompt_metadata"):
        alignment_reward_fn(images, captions, metas[:1])
    with pytest.raises(ValueError, match="prompt"):
        alignment_reward_fn(images, ["a photo of a cat", "a dog"], None)
    with pytest.raises(TypeError, match="images"):
        alignment_reward_fn([images[0]], captions[:1], metas[:1])


def test_prompt_fn_is_seeded() -> None:
    a, b = alignment_prompt_fn(seed=1), alignment_prompt_fn(seed=1)
    assert [a() for _ in range(5)] == [b() for _ in range(5)]
    prompt, meta = alignment_prompt_fn(seed=2, split="heldout")()
    assert parse_prompt(prompt) == meta
