"""Prompt functions: lists, metadata, seeding, checkpointable state."""

import json
import random

import pytest

from ddpo.prompts import (
    ACTIVITIES,
    IMAGENET_ANIMALS,
    PROMPT_FUNCTIONS,
    PROMPT_SETS,
    SIMPLE_ANIMALS,
    TEXT_PHRASES,
    TEXT_TEMPLATES,
    CheckpointablePromptFn,
    PoolPrompts,
    RepeatPrompts,
    build_prompt_fn,
    imagenet_animals,
    make_prompt_fn,
    nouns_activities,
    random_state_from_json,
    random_state_to_json,
    simple_animals,
    text_rendering,
    training_prompt_fn,
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


@pytest.mark.parametrize("name", sorted(PROMPT_FUNCTIONS))
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


def test_text_rendering_quotes_text_the_ocr_reward_reads() -> None:
    from ddpo.rewards.ocr import normalize_text, quoted_text

    # every template with every phrase: the ocr reward's target is exactly the phrase
    prompts = set()
    for template in TEXT_TEMPLATES:
        for phrase in TEXT_PHRASES:
            prompt = template.format(text=phrase)
            assert quoted_text(prompt) == phrase, prompt
            assert normalize_text(phrase), phrase
            prompts.add(prompt)
    assert len(prompts) == len(TEXT_TEMPLATES) * len(TEXT_PHRASES) >= 300
    assert len(set(TEXT_TEMPLATES)) == len(TEXT_TEMPLATES) >= 20
    assert len(set(TEXT_PHRASES)) == len(TEXT_PHRASES) >= 40
    # the drawn prompts carry their phrase and template in the metadata
    rng = random.Random(0)
    drawn = [text_rendering(rng) for _ in range(200)]
    for prompt, meta in drawn:
        assert prompt == TEXT_TEMPLATES[meta["template"]].format(text=meta["text"])
        assert quoted_text(prompt) == meta["text"]
    assert len({meta["template"] for _, meta in drawn}) == len(TEXT_TEMPLATES)
    assert len({prompt for prompt, _ in drawn}) > 150


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


@pytest.mark.parametrize("name", sorted(PROMPT_FUNCTIONS))
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


def test_prompt_sets_by_name() -> None:
    assert set(PROMPT_SETS) == {"shapes", *PROMPT_FUNCTIONS}
    for name in PROMPT_SETS:
        a, b = build_prompt_fn(name, seed=1), build_prompt_fn(name, seed=1)
        assert isinstance(a, CheckpointablePromptFn)
        assert [a() for _ in range(5)] == [b() for _ in range(5)]
    with pytest.raises(ValueError, match="prompts must be one of"):
        build_prompt_fn("nope", seed=0)


def test_repeat_prompts() -> None:
    reference = build_prompt_fn("simple_animals", seed=0)
    expected = [reference() for _ in range(3)]
    repeated = RepeatPrompts(build_prompt_fn("simple_animals", seed=0), 3)
    drawn = [repeated() for _ in range(9)]
    assert drawn == [item for item in expected for _ in range(3)]
    drawn[0][1]["animal"] = "changed"  # metadata dicts are copies
    assert drawn[1][1]["animal"] == expected[0][1]["animal"] != "changed"
    with pytest.raises(ValueError, match="repeats must be positive, got 0"):
        RepeatPrompts(reference, 0)


def test_pool_prompts_cycles_a_fixed_pool() -> None:
    reference = build_prompt_fn("shapes", seed=3)
    expected = [reference() for _ in range(3)]
    pooled = PoolPrompts(build_prompt_fn("shapes", seed=3), 3)
    drawn = [pooled() for _ in range(7)]
    assert drawn == [*expected, *expected, expected[0]]
    drawn[0][1]["colour"] = "changed"  # metadata dicts are copies
    assert pooled()[1]["colour"] == expected[1][1]["colour"]
    with pytest.raises(ValueError, match="size must be positive, got 0"):
        PoolPrompts(reference, 0)


def test_training_prompt_fn_pools_and_repeats() -> None:
    pooled = training_prompt_fn("shapes", seed=3, prompt_repeats=2, prompt_pool=3)
    reference = build_prompt_fn("shapes", seed=3)
    pool = [reference()[0] for _ in range(3)]
    assert [pooled()[0] for _ in range(8)] == [p for p in [*pool, pool[0]] for _ in range(2)]
    # the pool is drawn with `seed` on every process; fresh prompts are not
    other_process = training_prompt_fn(
        "shapes", seed=3, prompt_repeats=2, prompt_pool=3, process_index=1
    )
    assert other_process()[0] == pool[0]
    fresh = [training_prompt_fn("simple_animals", seed=3, prompt_repeats=1, process_index=i)
             for i in (0, 1)]  # fmt: skip
    assert [fresh[0]()[0] for _ in range(20)] != [fresh[1]()[0] for _ in range(20)]
    with pytest.raises(ValueError, match="prompt_pool must be >= 0, got -1"):
        training_prompt_fn("shapes", seed=0, prompt_repeats=1, prompt_pool=-1)
    with pytest.raises(ValueError, match="prompt_repeats must be positive, got 0"):
        training_prompt_fn("shapes", seed=0, prompt_repeats=0)
    with pytest.raises(ValueError, match="prompts must be one of"):
        training_prompt_fn("nope", seed=0, prompt_repeats=1)
