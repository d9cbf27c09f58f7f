"""The synthetic shapes data: grammar round trip, splits, deterministic rendering."""

import json

import pytest
import torch

from ddpo.data import (
    COLOURS,
    PALETTE,
    SHAPES,
    ShapesDataset,
    all_prompts,
    batches,
    caption,
    is_held_out,
    parse_prompt,
    prompt_fn,
    render,
    sample_metadata,
    vocabulary,
)
from ddpo.data.rendering import SHAPE_AREA, shape_masks


def test_caption_parse_round_trip_over_the_whole_grammar() -> None:
    prompts = all_prompts("all")
    assert len(prompts) == len({p for p, _ in prompts})  # captions are unique
    for prompt, meta in prompts:
        assert parse_prompt(prompt) == meta
        assert caption(meta) == prompt


def test_caption_examples() -> None:
    meta = {"colour": "red", "shape": "circle", "position": None, "background": "blue"}
    assert caption(meta) == "a red circle on a blue background"
    meta = {"colour": "orange", "shape": "square", "position": "left", "background": None}
    assert caption(meta) == "an orange square on the left"
    assert parse_prompt("A green cross at the top on an orange background.") == {
        "colour": "green",
        "shape": "cross",
        "position": "top",
        "background": "orange",
    }


@pytest.mark.parametrize(
    "prompt",
    ["a red hexagon", "a black circle", "a red circle on a red background", "red circle", ""],
)
def test_parse_rejects_text_outside_the_grammar(prompt: str) -> None:
    with pytest.raises(ValueError, match="prompt"):
        parse_prompt(prompt)


def test_caption_rejects_bad_metadata() -> None:
    with pytest.raises(ValueError, match="colour"):
        caption({"colour": "pink", "shape": "circle"})
    with pytest.raises(ValueError, match="background"):
        caption({"colour": "red", "shape": "circle", "background": "red"})
    with pytest.raises(ValueError, match="position"):
        caption({"colour": "red", "shape": "circle", "position": "middle"})


def test_splits_are_disjoint_and_train_covers_every_colour_shape_pair() -> None:
    train = {p for p, _ in all_prompts("train")}
    heldout = {p for p, _ in all_prompts("heldout")}
    assert heldout and not train & heldout
    assert len(train) + len(heldout) == len(all_prompts("all"))
    pairs = {(m["colour"], m["shape"]) for _, m in all_prompts("train")}
    assert pairs == {(c, s) for c in COLOURS for s in SHAPES}
    for _, meta in all_prompts("heldout"):
        assert is_held_out(meta) and meta["position"] and meta["background"]


def test_sampling_respects_split_and_is_seeded() -> None:
    gen = torch.Generator().manual_seed(0)
    assert not any(is_held_out(sample_metadata(gen, "train")) for _ in range(300))
    assert all(is_held_out(sample_metadata(gen, "heldout")) for _ in range(20))
    draw_a, draw_b = prompt_fn(seed=3), prompt_fn(seed=3)
    first = [draw_a() for _ in range(10)]
    assert first == [draw_b() for _ in range(10)]
    assert len({p for p, _ in first}) > 1
    for prompt, meta in first:
        assert parse_prompt(prompt) == meta
    with pytest.raises(ValueError, match="split"):
        prompt_fn(split="test")


def test_vocabulary_covers_every_caption_word() -> None:
    words = set(vocabulary())
    for prompt, _ in all_prompts("all"):
        assert set(prompt.split()) <= words


def test_render_is_deterministic_and_draws_the_attributes() -> None:
    meta = {"colour": "red", "shape": "square", "position": "right", "background": "blue"}
    a, b, c = render(meta, seed=1), render(meta, seed=1), render(meta, seed=2)
    assert a.shape == (3, 64, 64) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    red, blue = torch.tensor(PALETTE["red"]), torch.tensor(PALETTE["blue"])
    pixels = a.permute(1, 2, 0)
    is_red = (pixels - red).norm(dim=-1) < 0.15
    assert (pixels[0, 0] - blue).norm() < 0.15  # corner shows the background
    assert 100 < int(is_red.sum()) < 700
    xs = is_red.nonzero()[:, 1].float()
    assert float(xs.mean()) > 40  # on the right


def test_rendered_areas_match_the_area_table() -> None:
    size = torch.tensor([20.0])
    for index, shape in enumerate(SHAPES):
        mask = shape_masks(torch.tensor([index]), size * 3, size * 3, size, height=120, width=120)
        assert float(mask.sum()) == pytest.approx(SHAPE_AREA[shape] * 400, rel=0.02)


def test_dataset_and_batches_are_deterministic() -> None:
    data = ShapesDataset(5, seed=4)
    image, prompt, meta = data[2]
    again = ShapesDataset(5, seed=4)[2]
    assert torch.equal(image, again[0]) and prompt == again[1] == caption(meta)
    assert not torch.equal(image, ShapesDataset(5, seed=5)[2][0])
    with pytest.raises(IndexError):
        data[5]
    with pytest.raises(ValueError, match="length"):
        ShapesDataset(0)
    x1, c1, _ = next(batches(6, seed=9))
    x2, c2, _ = next(batches(6, seed=9))
    assert x1.shape == (6, 3, 64, 64) and torch.equal(x1, x2) and c1 == c2


@pytest.mark.parametrize("split", ["train", "heldout", "all"])
@pytest.mark.parametrize("drawn", [0, 1, 6])
def test_prompt_fn_state_continues_the_stream(split: str, drawn: int) -> None:
    original = prompt_fn(seed=3, split=split)
    for _ in range(drawn):
        original()
    state = json.loads(json.dumps(original.state_dict()))
    assert all(isinstance(byte, int) and 0 <= byte < 256 for byte in state["generator"])
    fresh = prompt_fn(seed=None, split=split)
    fresh.load_state_dict(state)
    assert [fresh() for _ in range(15)] == [original() for _ in range(15)]


def test_prompt_fn_refuses_a_state_of_another_split() -> None:
    state = prompt_fn(seed=0, split="heldout").state_dict()
    with pytest.raises(ValueError, match="split 'heldout', this function draws split 'train'"):
        prompt_fn(seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match=r"not a torch\.Generator state"):
        prompt_fn(seed=0).load_state_dict({"split": "train", "generator": [1, 2, 3]})
