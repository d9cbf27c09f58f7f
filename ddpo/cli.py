"""The ``ddpo`` command: ``ddpo train`` fine-tunes a model with DDPO; ``ddpo sample`` draws images;
``ddpo eval`` scores a model on held-out prompts against its base.

This module parses flags and wires library pieces together: the default preset
(:mod:`ddpo.presets`), rewards by name (:mod:`ddpo.rewards.registry`), prompt sets by name
(:mod:`ddpo.prompts`), the pipeline, the trainer, and the run report (:mod:`ddpo.reporting`);
``ddpo train`` is wired in :mod:`ddpo.cli_train`, ``ddpo sample`` in :mod:`ddpo.cli_sample`,
``ddpo eval`` in :mod:`ddpo.cli_eval`.

``ddpo train`` with no flags runs the default preset (:func:`ddpo.presets.default_preset`): it
fine-tunes the packaged ``ddpo-tiny-shapes`` model with the programmatic prompt-alignment reward
on prompts of its shapes grammar, in a few minutes on a CPU. Every field of `DDPOConfig` is a
nested flag (``--ddpo_config.sample_batch_size=6``); ``ddpo train --help`` documents them all.

Each run writes into its output folder (``--ddpo_config.output_dir``, default
``logs/<run_name>``): ``metrics.jsonl`` (one line per epoch), tensorboard logs under ``logs/``,
``images/epoch_NNNN.png`` (a grid of the epoch's samples with prompts and rewards),
``reward_curve.png``, checkpoints, and the final pipeline in ``final/``. It ends with a table of
the per-epoch mean reward (and the means of the reward's summary metadata, e.g. the alignment
reward's ``accuracy_mean``). With ``--ddpo_config.push_to_hub`` the final pipeline is uploaded
to the Hugging Face Hub after all of that is saved.
"""

import contextlib
import dataclasses
import inspect
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from ddpo.cli_eval import EvalArgs, load_evaluation, run_eval
from ddpo.cli_sample import SampleArgs, draw_samples, load_sampler, run_sample
from ddpo.cli_train import (
    HubUploadError,
    TrainArgs,
    TrainResult,
    build_reward_fn,
    preset_args,
    preset_prompt_fn,
    run_train,
    setup_train,
    train_and_report,
)
from ddpo.presets import default_preset
from ddpo.prompts import PROMPT_SETS, PoolPrompts, RepeatPrompts, build_prompt_fn
from ddpo.rewards.registry import REWARDS
from ddpo.trainer.config import DDPOConfig

__all__ = [
    "PROMPT_SETS",
    "REWARDS",
    "EvalArgs",
    "HubUploadError",
    "SampleArgs",
    "TrainArgs",
    "TrainResult",
    "build_prompt_fn",
    "build_reward_fn",
    "default_preset",
    "main",
    "parse_train_args",
    "pool_prompts",
    "preset_prompt_fn",
    "repeat_prompts",
    "run_eval",
    "run_sample",
    "run_train",
]

#: Kept for code written against earlier versions: the prompt wrappers of `ddpo.prompts`.
repeat_prompts = RepeatPrompts
pool_prompts = PoolPrompts


#: What a bad flag, path or setting raises while ``ddpo`` sets up, before any work starts (the
#: checks of `ddpo.cli_train` and `ddpo.cli_sample`, the run-folder and checkpoint checks, the
#: model registry and pipeline). `main` prints such an error as one line, ``ddpo: <message>``,
#: and exits with 2.
_USER_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    FileExistsError,
    FileNotFoundError,
)


# ---------------------------------------------------------------------------------------------
# Parsing


class _ConfigError(Exception):
    """`DDPOConfig`'s, `TrainArgs`' or `SampleArgs`' check failed while tyro built it (not a
    ValueError, so tyro lets it out)."""


#: The flag dataclasses whose own checks (``__post_init__``) `_tyro_registry` lets out.
_CHECKED_STRUCTS: tuple[type, ...] = (DDPOConfig, TrainArgs, SampleArgs, EvalArgs)


def _tyro_registry() -> Any:
    """Let tyro parse `DDPOConfig`'s ``dict[str, Any]`` fields as JSON strings, and let the
    checks of `_CHECKED_STRUCTS` (e.g. of ``--reward``, ``--guidance_scale``) reach
    `parse_train_args` and `_parse_flags` (tyro would draw them in a box)."""
    from tyro.constructors import (
        ConstructorRegistry,
        PrimitiveConstructorSpec,
        StructConstructorSpec,
    )

    registry = ConstructorRegistry()

    @registry.primitive_rule
    def _json_dict(type_info: Any) -> Any:
        if type_info.type != dict[str, Any]:
            return None
        return PrimitiveConstructorSpec(
            nargs=1,
            metavar="JSON",
            instance_from_str=lambda args: _json_object(args[0]),
            is_instance=lambda value: isinstance(value, dict),
            str_from_instance=lambda value: [json.dumps(value)],
        )

    building: list[type] = []

    @registry.struct_rule
    def _config_errors_out(type_info: Any) -> Any:
        if type_info.type not in _CHECKED_STRUCTS or type_info.type in building:
            return None
        building.append(type_info.type)  # the next rule (tyro's dataclass rule) builds the spec
        try:
            spec = ConstructorRegistry.get_struct_spec(type_info)
        finally:
            building.pop()
        if not isinstance(spec, StructConstructorSpec):
            return spec
        instantiate = spec.instantiate

        def checked(*args: Any, **kwargs: Any) -> Any:
            try:
                return instantiate(*args, **kwargs)
            except (ValueError, ImportError) as err:
                raise _ConfigError(str(err)) from err

        return dataclasses.replace(spec, instantiate=checked)

    return registry


def _json_object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {text!r}")
    return value


def parse_train_args(argv: Sequence[str] | None = None, *, prog: str = "ddpo train") -> TrainArgs:
    """`TrainArgs` from command-line flags (``--help`` prints every field's documentation).

    Raises:
        SystemExit: after ``--help`` (status 0); for a bad flag or value (status 2) once the
            error is printed to stderr: tyro's message for a flag it cannot parse, one line
            ``ddpo: <message>`` for a setting `DDPOConfig` rejects.
    """
    import tyro

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        # `--preset NAME` sets the defaults the other flags override (the launch's process
        # count picks the preset's per-process sizes).
        default = preset_args(
            _preset_name(args), num_processes=int(os.environ.get("WORLD_SIZE", "1"))
        )
        with _tyro_registry():
            description = _help_description(TrainArgs, args)
            return tyro.cli(TrainArgs, args=args, prog=prog, use_underscores=True,
                            default=default, description=description)  # fmt: skip
    except (_ConfigError, ValueError) as err:
        print(f"ddpo: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _help_description(kind: type, args: Sequence[str]) -> str | None:
    """With ``--help``: ``kind``'s documentation and the model families of the family table
    (`ddpo.adapters.families.families_text`, so that a new family is named without an edit
    here); otherwise ``None``, tyro's default (the table imports the models' libraries)."""
    if not {"-h", "--help"} & set(args):
        return None
    from ddpo.adapters.families import families_text

    text = inspect.getdoc(kind) or ""
    families = f"Model families, read from a folder's model_index.json: {families_text()}."
    return f"{text}\n\n{families}"


def _preset_name(args: Sequence[str]) -> str:
    """The value of the last ``--preset NAME`` / ``--preset=NAME`` in ``args`` (``default``)."""
    name = "default"
    for i, arg in enumerate(args):
        if arg == "--preset" and i + 1 < len(args):
            name = args[i + 1]
        elif arg.startswith("--preset="):
            name = arg.removeprefix("--preset=")
    return name


_Flags = TypeVar("_Flags", SampleArgs, EvalArgs)


def _parse_flags(kind: type[_Flags], argv: Sequence[str], prog: str) -> _Flags:
    """``kind`` (`SampleArgs` or `EvalArgs`) from flags; SystemExit as `parse_train_args`."""
    import tyro

    try:
        with _tyro_registry():
            return tyro.cli(kind, args=list(argv), prog=prog, use_underscores=True,
                            description=_help_description(kind, argv))  # fmt: skip
    except _ConfigError as err:
        print(f"ddpo: {err}", file=sys.stderr)
        raise SystemExit(2) from None


_USAGE = """usage: ddpo {train,sample,eval,serve-reward} [FLAGS]

  ddpo train    fine-tune a diffusion model with DDPO (no flags: the default preset,
                ddpo-tiny-shapes with the prompt-alignment reward, a few minutes on a CPU)
  ddpo sample   write images from a model folder: ddpo sample --model DIR --prompt "..."
  ddpo eval     score a model on held-out prompts, against its base: ddpo eval --model DIR
                --base NAME (the tiny shapes models' held-out captions by default)
  ddpo serve-reward  serve a reward over HTTP for RemoteReward: ddpo serve-reward --reward NAME

Run `ddpo train --help`, `ddpo sample --help`, `ddpo eval --help` or `ddpo serve-reward --help`
for every flag."""


#: Start-up log messages of diffusers and transformers that say nothing to a ``ddpo`` user:
#: ``(logger name, part of the message)``. Only these are hidden, and only by `main`.
_HARMLESS_LOG_MESSAGES: tuple[tuple[str, str], ...] = (
    # Importing diffusers' pipelines touches transformers' image processors; ddpo needs neither
    # torchvision nor those processors.
    ("transformers.utils.import_utils", "requires torchvision (not installed); falling back to"),
)


class _DropMessages(logging.Filter):
    """Drop a logger's records whose message contains one of ``fragments``."""

    def __init__(self, fragments: tuple[str, ...]) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def _hide_harmless_messages() -> None:
    """Hide `_HARMLESS_LOG_MESSAGES` (once per process; other messages are untouched)."""
    for name in {logger for logger, _ in _HARMLESS_LOG_MESSAGES}:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            fragments = tuple(text for owner, text in _HARMLESS_LOG_MESSAGES if owner == name)
            logger.addFilter(_DropMessages(fragments))


@contextlib.contextmanager
def _quiet_loading(verbose: bool) -> Iterator[None]:
    """Unless ``verbose``: diffusers', transformers' and huggingface_hub's progress bars off
    (``Loading pipeline components``, ``Loading weights``, ...) and diffusers' and transformers'
    loggers at ``WARNING`` or above, through the libraries' own settings, restored on exit.

    Only `main` does this; the Python API leaves these settings to the user.
    """
    if verbose:
        yield
        return
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging
    from huggingface_hub.utils.tqdm import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    libraries = (diffusers_logging, transformers_logging)
    bars = [library.is_progress_bar_enabled() for library in libraries]
    hub_bars = not are_progress_bars_disabled()
    levels = [library.get_verbosity() for library in libraries]
    for library, level in zip(libraries, levels, strict=True):
        library.disable_progress_bar()
        library.set_verbosity(max(level, logging.WARNING))
    disable_progress_bars()
    try:
        yield
    finally:
        for library, bar, level in zip(libraries, bars, levels, strict=True):
            library.set_verbosity(level)
            if bar:
                library.enable_progress_bar()
        if hub_bars:
            enable_progress_bars()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ddpo`` console script; returns the exit status.

    0: done. 2: a bad command, flag, path or setting, reported as one line ``ddpo: <message>``
    (or tyro's message for a flag it cannot parse) before any model loads or trains. 1: the
    upload to the Hub failed (everything is saved locally). An error while training shows its
    traceback. The libraries' loading progress bars are off unless ``--verbose`` is given
    (`_quiet_loading`).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in ("train", "sample", "eval", "serve-reward"):
        print(f"ddpo: unknown command {command!r}\n\n{_USAGE}", file=sys.stderr)
        return 2
    if command == "serve-reward":
        from ddpo.cli_serve import main as serve_reward

        return serve_reward(rest)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _hide_harmless_messages()

    # 1. Parse: every error here is the user's to fix, and is reported in a line.
    try:
        parsed: TrainArgs | SampleArgs | EvalArgs
        if command == "train":
            parsed = parse_train_args(rest)
        elif command == "sample":
            parsed = _parse_flags(SampleArgs, rest, "ddpo sample")
        else:
            parsed = _parse_flags(EvalArgs, rest, "ddpo eval")
    except SystemExit as stop:  # --help (0), or a flag tyro could not parse (already printed)
        return stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 2
    with _quiet_loading(parsed.verbose):
        return _set_up_and_work(parsed)


def _set_up_and_work(parsed: TrainArgs | SampleArgs | EvalArgs) -> int:
    """`main`'s steps after parsing; returns the exit status."""
    # 1. Set up: every error here is the user's to fix, and is reported in a line.
    try:
        if isinstance(parsed, TrainArgs):
            train_setup = setup_train(parsed)
        elif isinstance(parsed, EvalArgs):
            evaluation = load_evaluation(parsed)
        else:
            sampler = load_sampler(parsed)
    except _USER_ERRORS as err:
        print(f"ddpo: {err}", file=sys.stderr)
        return 2

    # 2. Work: an error here is a crash, shown with its traceback (but a failed upload is not).
    try:
        if isinstance(parsed, TrainArgs):
            train_and_report(train_setup)
        elif isinstance(parsed, EvalArgs):
            run_eval(parsed, evaluation)
        else:
            files = draw_samples(parsed, sampler)
            kind = "videos" if files and files[0].suffix == ".webp" else "images"
            print(f"wrote {len(files)} {kind} to {files[0].parent if files else '-'}")
    except HubUploadError as err:
        print(f"ddpo: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
