"""The CLI's prompt functions are checkpointable: a saved state, loaded into a freshly built
function, continues the prompt stream exactly."""

import json
from collections.abc import Callable
from typing import Any

import pytest

from ddpo.cli import TrainArgs, preset_prompt_fn
from ddpo.prompts import PoolPrompts, RepeatPrompts, build_prompt_fn, training_prompt_fn

Builder = Callable[[int], Any]
"""Builds a prompt function from a seed."""

BUILDERS: dict[str, Builder] = {
    "build(shapes)": lambda seed: build_prompt_fn("shapes", seed=seed),
    "build(simple_animals)": lambda seed: build_prompt_fn("simple_animals", seed=seed),
    "build(imagenet_animals)": lambda seed: build_prompt_fn("imagenet_animals", seed=seed),
    "build(nouns_activities)": lambda seed: build_prompt_fn("nouns_activities", seed=seed),
    "repeat(build(nouns_activities))": lambda seed: RepeatPrompts(
        build_prompt_fn("nouns_activities", seed=seed), 3
    ),
    "repeat(build(shapes))": lambda seed: RepeatPrompts(build_prompt_fn("shapes", seed=seed), 4),
    "pool(build(shapes))": lambda seed: PoolPrompts(build_prompt_fn("shapes", seed=seed), 3),
    "repeat(pool(build(shapes)))": lambda seed: RepeatPrompts(
        PoolPrompts(build_prompt_fn("shapes", seed=seed), 3), 2
    ),
    "preset(pool)": lambda seed: preset_prompt_fn(
        TrainArgs(prompt_pool=2, prompt_repeats=3), seed=seed
    ),
    "preset(no pool)": lambda seed: preset_prompt_fn(
        TrainArgs(prompt_pool=0, prompt_repeats=2), seed=seed, process_index=1
    ),
}


def _json_round_trip(state: dict[str, Any]) -> dict[str, Any]:
    text = json.dumps(state, allow_nan=False)
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("drawn", [0, 1, 5, 7])
def test_state_continues_the_stream_in_a_fresh_function(name: str, drawn: int) -> None:
    build = BUILDERS[name]
    original = build(3)
    for _ in range(drawn):
        original()
    state = _json_round_trip(original.state_dict())
    # Built with another seed: only the loaded state can make it continue the original.
    fresh = build(4)
    unloaded = build(4)
    fresh.load_state_dict(state)
    continued = [original() for _ in range(12)]
    assert [fresh() for _ in range(12)] == continued
    assert [unloaded() for _ in range(12)] != continued  # the test is not vacuous
    # The state after continuing is the same too.
    assert _json_round_trip(fresh.state_dict()) == _json_round_trip(original.state_dict())


def test_wrapper_states_nest_the_inner_state() -> None:
    fn = RepeatPrompts(PoolPrompts(build_prompt_fn("shapes", seed=0), 2), 3)
    fn()
    state = fn.state_dict()
    assert state["left"] == 2
    assert state["item"][0] == fn()[0]
    inner = state["inner"]
    assert inner["position"] == 1 and len(inner["pool"]) == 2
    assert set(inner["inner"]) == {"split", "generator"}
    assert all(isinstance(byte, int) for byte in inner["inner"]["generator"])


def test_a_plain_inner_function_has_no_inner_state() -> None:
    prompts = iter(["a", "b", "c"])

    def plain() -> tuple[str, dict[str, Any]]:
        return next(prompts), {}

    fn = RepeatPrompts(plain, 2)
    assert fn() == ("a", {})
    state = _json_round_trip(fn.state_dict())
    assert state == {"left": 1, "item": ["a", {}], "inner": None}
    other = RepeatPrompts(plain, 2)
    other.load_state_dict(state)
    assert other() == ("a", {})
    assert other() == ("b", {})


def _training(name: str, *, pool: int, repeats: int = 2) -> Callable[[], Any]:
    return lambda: training_prompt_fn(name, seed=0, prompt_repeats=repeats, prompt_pool=pool)


@pytest.mark.parametrize(
    ("saved", "loader", "match"),
    [
        (
            lambda: build_prompt_fn("simple_animals", seed=0),
            lambda: build_prompt_fn("imagenet_animals", seed=0),
            "'simple_animals', this one is 'imagenet_animals' "
            r"\(prompts='simple_animals' then, 'imagenet_animals' now\)",
        ),
        (
            lambda: PoolPrompts(build_prompt_fn("shapes", seed=0), 2),
            lambda: PoolPrompts(build_prompt_fn("shapes", seed=0), 3),
            r"pool of 2 prompts, this function one of 3 \(prompt_pool=2 then, 3 now\)",
        ),
        (
            lambda: RepeatPrompts(build_prompt_fn("shapes", seed=0), 5),  # 2 left after 3
            lambda: RepeatPrompts(build_prompt_fn("shapes", seed=0), 2),
            r"repeats each prompt more than 2 times, this one repeats it 2 times "
            r"\(prompt_repeats=2\)",
        ),
        (
            lambda: RepeatPrompts(build_prompt_fn("shapes", seed=0), 2),
            lambda: RepeatPrompts(lambda: ("a", {}), 2),
            "build the same prompt function",
        ),
        (
            lambda: build_prompt_fn("shapes", seed=0),
            lambda: RepeatPrompts(build_prompt_fn("shapes", seed=0), 2),
            r"saved state is of fresh prompts of the shapes grammar \(prompts='shapes', "
            r"prompt_pool=0\), but this function draws each prompt repeated 2 times",
        ),
        # The case: --prompt_pool changed between the run and its resume.
        (
            _training("simple_animals", pool=2),
            _training("simple_animals", pool=0),
            r"saved state is of a fixed pool of 2 prompts \(prompt_pool=2\), but this function "
            r"draws fresh prompts of the set 'simple_animals' \(prompts='simple_animals', "
            r"prompt_pool=0\)",
        ),
        (
            _training("shapes", pool=3),
            _training("shapes", pool=0),
            r"a fixed pool of 3 prompts \(prompt_pool=3\), but this function draws fresh "
            r"prompts of the shapes grammar",
        ),
        (
            _training("nouns_activities", pool=0),
            _training("nouns_activities", pool=2),
            r"fresh prompts of the set 'nouns_activities' \(prompts='nouns_activities', "
            r"prompt_pool=0\), but this function draws a fixed pool of 2 prompts "
            r"\(prompt_pool=2\)",
        ),
    ],
)
def test_a_state_of_another_prompt_function_is_refused(
    saved: Callable[[], Any], loader: Callable[[], Any], match: str
) -> None:
    source = saved()
    for _ in range(3):
        source()
    target = loader()
    with pytest.raises(ValueError, match=match) as caught:
        target.load_state_dict(_json_round_trip(source.state_dict()))
    assert "state lacks" not in str(caught.value)  # a setting is named, not a missing key
