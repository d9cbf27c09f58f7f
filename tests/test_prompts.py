"""Prompt functions: lists, metadata, seeding, checkpointable state."""

import json
import random

import pytest

from ddpo.prompts import (
    ACTIVITIES,
    IMAGENET_ANIMALS,
    SIMPLE_ANIMALS,
    CheckpointablePromptFn,
    imagenet_animals,
    make_prompt_fn,
    nouns_activities,
    random_state_from_json,
    random_state_to_json,
    simple_animals,
    with_article,
)


def test_lists() -> None:
    assert len(IMAGENET_ANIMALS) == 398
    assert IMAGENET_ANIMALS[0] == "tench"
    assert IMAGENET_ANIMALS[151] == "Chihuahua"
    assert IMAGENET_ANIMALS[291] == "lion"
    assert IMAGENET_ANIMALS[397] == "pufferfish"
    assert len(set(SIMPLE_ANIMALS)) == len(SIMPLE_ANIMALS)
    assert set(ACTIVITIES) == {"washing dishes", "riding a bike", "playing chess"}


@pytest.mark.parametrize("name", ["simple_animals", "imagenet_animals", "nouns_activities"])
def test_seeded_prompt_functions_are_deterministic(name: str) -> None:
    first = [make_prompt_fn(name, seed=3)() for _ in range(1)]
    fn_a, fn_b = make_prompt_fn(name, seed=3), make_prompt_fn(name, seed=3)
    stream_a = [fn_a() for _ in range(20)]
    stream_b = [fn_b() for _ in range(20)]
    assert stream_a == stream_b
    assert stream_a[0] == first[0]
    other = make_prompt_fn(name, seed=4)
    assert [other() for _ in range(20)] != stream_a
    assert len({prompt for prompt, _ in stream_a}) > 1


def test_metadata() -> None:
    rng = random.Random(0)
    prompt, meta = simple_animals(rng)
    assert prompt in SIMPLE_ANIMALS and meta == {"animal": prompt}
    prompt, meta = imagenet_animals(rng)
    assert IMAGENET_ANIMALS[meta["class_index"]] == prompt == meta["class_name"]
    for _ in range(30):
        prompt, meta = nouns_activities(rng)
        assert meta["animal"] in SIMPLE_ANIMALS and meta["activity"] in ACTIVITIES
        assert prompt == f"{with_article(meta['animal'])} {meta['activity']}"
    assert nouns_activities(rng, nouns=["owl"], activities=["sleeping"])[0] == "an owl sleeping"


def test_unseeded_call_uses_module_random() -> None:
    random.seed(11)
    a = [simple_animals() for _ in range(5)]
    random.seed(11)
    assert [simple_animals() for _ in range(5)] == a


def test_errors() -> None:
    with pytest.raises(ValueError, match="name must be one of"):
        make_prompt_fn("nope")
    with pytest.raises(ValueError, match="nouns"):
        nouns_activities(random.Random(0), nouns=[])
    with pytest.raises(ValueError, match="noun"):
        with_article("")


@pytest.mark.parametrize("name", ["simple_animals", "imagenet_animals", "nouns_activities"])
@pytest.mark.parametrize("drawn", [0, 1, 9])
def test_state_dict_continues_the_stream(name: str, drawn: int) -> None:
    original = make_prompt_fn(name, seed=3)
    assert isinstance(original, CheckpointablePromptFn)
    for _ in range(drawn):
        original()
    state = json.loads(json.dumps(original.state_dict(), allow_nan=False))
    fresh = make_prompt_fn(name, seed=None)
    fresh.load_state_dict(state)
    assert [fresh() for _ in range(20)] == [original() for _ in range(20)]


def test_random_state_json_round_trip() -> None:
    rng = random.Random(5)
    rng.gauss(0, 1)  # a state with a cached Gaussian
    state = json.loads(json.dumps(random_state_to_json(rng)))
    assert len(state["internal"]) == 625 and state["gauss_next"] is not None
    other = random.Random()
    random_state_from_json(other, state)
    assert other.getstate() == rng.getstate()
    with pytest.raises(ValueError, match=r"not a random\.Random state"):
        random_state_from_json(other, {"version": 3})
    with pytest.raises(ValueError, match="nouns_activities', this one is 'simple_animals'"):
        make_prompt_fn("simple_animals").load_state_dict(
            make_prompt_fn("nouns_activities").state_dict()
        )
