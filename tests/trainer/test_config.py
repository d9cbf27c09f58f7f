"""DDPOConfig: TRL's fields and defaults, our fields, validation (fast: no model)."""

import ast
import dataclasses
import importlib.util
from pathlib import Path

import pytest

import ddpo
from ddpo import DDPOConfig

# TRL 0.11's DDPOConfig, field -> default (trl/trainer/ddpo_config.py), minus exp_name (derived
# from sys.argv).
TRL_DEFAULTS = {
    "run_name": "",
    "seed": 0,
    "log_with": None,
    "tracker_kwargs": {},
    "accelerator_kwargs": {},
    "project_kwargs": {},
    "tracker_project_name": "trl",
    "logdir": "logs",
    "num_epochs": 100,
    "save_freq": 1,
    "num_checkpoint_limit": 5,
    "mixed_precision": "fp16",
    "allow_tf32": True,
    "resume_from": "",
    "sample_num_steps": 50,
    "sample_eta": 1.0,
    "sample_guidance_scale": 5.0,
    "sample_batch_size": 1,
    "sample_num_batches_per_epoch": 2,
    "train_batch_size": 1,
    "train_use_8bit_adam": False,
    "train_learning_rate": 3e-4,
    "train_adam_beta1": 0.9,
    "train_adam_beta2": 0.999,
    "train_adam_weight_decay": 1e-4,
    "train_adam_epsilon": 1e-8,
    "train_gradient_accumulation_steps": 1,
    "train_max_grad_norm": 1.0,
    "train_num_inner_epochs": 1,
    "train_cfg": True,
    "train_adv_clip_max": 5.0,
    "train_clip_range": 1e-4,
    "train_timestep_fraction": 1.0,
    "per_prompt_stat_tracking": False,
    "per_prompt_stat_tracking_buffer_size": 16,
    "per_prompt_stat_tracking_min_count": 16,
    "async_reward_computation": False,
    "max_workers": 2,
    "negative_prompts": "",
    "push_to_hub": False,
}
OURS = {
    "output_dir": "",
    "loss_type": "ppo",
    "advantage_mode": "auto",
    "kl_coef": 0.0,
    "gradient_checkpointing": False,
    "hub_model_id": "",
    "resume_allow_config_changes": False,
    "on_policy_tolerance": None,
    "compile_denoiser": False,
    "sample_cuda_graphs": False,
    "channels_last": False,
    "prompt_embedding_cache_size": 0,
    "sample_same_latent": False,
    "kl_convention": "exact",
    "train_drop_zero_advantages": False,
    "train_timestep_order": "random",
    "train_clip_range_low": None,
    "train_clip_range_high": None,
    "eval_freq": 0,  # held-out evaluation: off, as TRL had none
    "eval_prompt_set": "shapes_heldout",
    "eval_num_prompts": 16,
    "eval_images_per_prompt": 1,
    "eval_sampler": "deterministic",
    "eval_num_steps": 0,
    "ema_decay": 0.0,  # no EMA, as TRL had none
    "ema_update_every": 1,
    "ema_convention": "step",
    "ema_save_final": True,
    "ema_sampling": False,  # sampling uses the trained weights
    "algorithm": "ddpo",  # TRL's DDPO; DiffusionNFT, AWM and Diffusion-DPO by name
    "train_num_timesteps": 0,
    "backprop_grad_steps": 1,
    "sde_window_schedule": "fixed",  # the policy's own window
    "sliding_window_shift_interval": 25,
    "sliding_window_stride": 0,
    "sliding_window_roll_back": False,
    "sliding_window_strategy": "progressive",
    "sliding_window_min_shift_interval": 1,
    "sliding_window_decay_threshold": 13,
    "sliding_window_decay_rate": 0.1,
    "backprop_lv_samples": 2,
    "backprop_base_pull": 0.0,
    "nft_beta": 1.0,
    "nft_decay_type": 1,
    "awm_weighting": "uniform",
    "awm_ghuber_power": 0.25,
    "awm_kl_weighting": "uniform",
    "dpo_beta": 5000.0,
    "dpo_pairs": "best_worst",
}
# Fields read by the trainer through a config method rather than directly.
READ_VIA_PROPERTY = {
    "advantage_mode": "resolve_advantage_mode",
    "per_prompt_stat_tracking": "resolve_advantage_mode",
}


def test_trl_fields_and_defaults() -> None:
    config = DDPOConfig()
    fields = [f.name for f in dataclasses.fields(DDPOConfig)]
    assert fields[0] == "exp_name"
    assert fields[1 : 1 + len(TRL_DEFAULTS)] == list(TRL_DEFAULTS)
    for name, default in (TRL_DEFAULTS | OURS).items():
        assert getattr(config, name) == default, name
    assert set(fields) == {"exp_name", *TRL_DEFAULTS, *OURS}
    assert config.exp_name  # script name, never empty


def test_public_import() -> None:
    assert ddpo.DDPOConfig is DDPOConfig
    assert ddpo.DDPOTrainer.__name__ == "DDPOTrainer"


def _config_reads(source: str) -> set[str]:
    """Attribute names loaded from a config object in ``source``: ``config.x``,
    ``self.config.x``, ``trainer.ddpo_config.x`` (the owner is a name or an attribute ending in
    ``config``). A bare ``x`` or ``args.x``, or a store ``config.x = ...``, is not a read."""
    read: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load)):
            continue
        owner = node.value
        owner_name = (
            owner.id
            if isinstance(owner, ast.Name)
            else owner.attr
            if isinstance(owner, ast.Attribute)
            else ""
        )
        if owner_name.endswith("config"):
            read.add(node.attr)
    return read


# The config's own modules (its fields and their validation rules, which read every field) and
# the CLI (which only builds configs): their reads do not count as the library acting on a field.
NOT_USES = ("trainer/config.py", "trainer/config_checks.py", "cli.py")


def _library_config_reads() -> set[str]:
    """Config reads in the library, outside the config's modules and the CLI (``NOT_USES``): the
    library must act on every field."""
    package = Path(ddpo.__file__).parent
    assert all((package / name).is_file() for name in NOT_USES)  # no stale exclusion
    read: set[str] = set()
    for path in package.rglob("*.py"):
        if path.relative_to(package).as_posix() in NOT_USES:
            continue
        read |= _config_reads(path.read_text())
    return read


def _property_reads(prop: str) -> set[str]:
    """``self.<field>`` loads in the body of property ``DDPOConfig.<prop>``."""
    tree = ast.parse(Path(ddpo.trainer.config.__file__).read_text())
    (cls,) = (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "DDPOConfig")
    (func,) = (n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == prop)
    return {
        n.attr
        for n in ast.walk(func)
        if isinstance(n, ast.Attribute)
        and isinstance(n.ctx, ast.Load)
        and isinstance(n.value, ast.Name)
        and n.value.id == "self"
    }


def test_config_read_detection_is_precise() -> None:
    source = (
        "seed = args.seed\n"
        "self.output_dir = x\n"
        "config.logdir = 'y'\n"
        "f(self.config.sample_eta, config.num_epochs, trainer.ddpo_config.kl_coef)\n"
        "g(self.configuration_name.loss_type)\n"
    )
    assert _config_reads(source) == {"sample_eta", "num_epochs", "kl_coef"}


def _unread(names: list[str], read: set[str]) -> list[str]:
    """The ``names`` neither in ``read`` nor read through their documented property."""
    return [
        name
        for name in names
        if name not in read
        and not (
            name in READ_VIA_PROPERTY
            and READ_VIA_PROPERTY[name] in read
            and name in _property_reads(READ_VIA_PROPERTY[name])
        )
    ]


def test_every_field_is_read_by_the_trainer() -> None:
    """No decorative field: each is read as ``<...>config.<field>`` in the library outside
    config.py (or through a documented property that reads it)."""
    read = _library_config_reads()
    names = [f.name for f in dataclasses.fields(DDPOConfig)]
    assert _unread(names, read) == [], "DDPOConfig fields never read by the library"
    # the check can fail: a field nobody reads, or one whose property is never read
    assert _unread([*names, "not_a_field"], read) == ["not_a_field"]
    assert sorted(_unread(names, read - {"resolve_advantage_mode"})) == sorted(READ_VIA_PROPERTY)


def test_every_field_documented() -> None:
    src = Path(ddpo.trainer.config.__file__).read_text()
    for f in dataclasses.fields(DDPOConfig):
        head = src.index(f"    {f.name}: ")
        after = src[head:].split("\n", 2)
        # the next line (or the one after a wrapped default) opens a docstring
        assert '"""' in after[1] or '"""' in after[2], f.name


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sample_batch_size": 2, "train_batch_size": 4}, "sample_batch_size .2. must be >="),
        ({"sample_batch_size": 6, "train_batch_size": 4}, "multiple of train_batch_size"),
        ({"num_epochs": 0}, "num_epochs must be > 0, got 0"),
        ({"sample_num_steps": -1}, "sample_num_steps must be > 0"),
        ({"train_batch_size": 0}, "train_batch_size must be > 0"),
        ({"sample_eta": 0.0}, r"sample_eta must be in \(0, 1\]: .* got 0.0"),
        ({"sample_eta": 1.5}, r"sample_eta must be in \(0, 1\]: .*above 1.* got 1.5"),
        ({"seed": -1}, r"seed must be in \[0, 2\*\*32 - 1\] .* got -1"),
        ({"seed": 2**32}, r"seed must be in \[0, 2\*\*32 - 1\] .* got 4294967296"),
        ({"tracker_project_name": ""}, "tracker_project_name must be a non-empty str"),
        ({"train_timestep_fraction": 0.0}, "train_timestep_fraction must be in"),
        ({"train_timestep_fraction": 1.5}, "train_timestep_fraction must be in"),
        ({"train_clip_range": 0.0}, "train_clip_range must be > 0"),
        ({"train_learning_rate": -1.0}, "train_learning_rate must be > 0"),
        ({"mixed_precision": "fp8"}, "mixed_precision must be one of"),
        ({"loss_type": "dpo"}, "loss_type must be one of .* got 'dpo'"),
        ({"advantage_mode": "median"}, "advantage_mode must be one of .* got 'median'"),
        ({"per_prompt_stat_tracking": True, "advantage_mode": "global"}, "contradicts"),
        ({"log_with": "mlflow"}, "log_with must be None or one of"),
        ({"kl_coef": -0.1}, "kl_coef must be >= 0"),
        ({"train_adam_beta1": 1.0}, "train_adam_beta1 must be in"),
        ({"save_freq": -1}, "save_freq must be >= 0"),
        ({"max_workers": 0}, "max_workers must be > 0"),
        ({"sample_eta": float("nan")}, "sample_eta must be finite"),
        ({"run_name": "a/b"}, "run_name must be a plain folder name"),
        ({"accelerator_kwargs": {"mixed_precision": "no"}}, "accelerator_kwargs must not set"),
        ({"project_kwargs": {"project_dir": "x"}}, "project_kwargs must not set 'project_dir'"),
        (
            {"per_prompt_stat_tracking": True, "per_prompt_stat_tracking_min_count": 20},
            "min_count .20. must be <=",
        ),
    ],
)
def test_validation_errors_name_field_and_value(kwargs: dict[str, object], match: str) -> None:
    # Set the fields after construction so that validate() itself is tested (with the jaxtyping
    # hook on, beartype would reject Literal violations in __init__ first).
    config = DDPOConfig()
    for name, value in kwargs.items():
        setattr(config, name, value)
    with pytest.raises(ValueError, match=match):
        config.validate()


def test_constructor_validates() -> None:
    with pytest.raises(ValueError, match="sample_eta must be in"):
        DDPOConfig(sample_eta=-1.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sample_batch_size": 2.0}, "sample_batch_size must be an int, got 2.0"),
        ({"num_epochs": True}, "num_epochs must be an int"),
        ({"train_learning_rate": "1e-3"}, "train_learning_rate must be a float"),
        ({"tracker_kwargs": []}, "tracker_kwargs must be a dict"),
        # a string or an int in a bool field used to switch the option on silently
        ({"train_cfg": "False"}, "train_cfg must be True or False, got 'False' .str."),
        ({"allow_tf32": 0}, "allow_tf32 must be True or False, got 0 .int."),
        ({"push_to_hub": "no"}, "push_to_hub must be True or False"),
        ({"async_reward_computation": 1}, "async_reward_computation must be True or False"),
        ({"negative_prompts": ["ugly"]}, r"negative_prompts must be a str, got \['ugly'\]"),
        ({"tracker_project_name": None}, "tracker_project_name must be a str, got None"),
        ({"hub_model_id": None}, "hub_model_id must be a str, got None"),
    ],
)
def test_type_errors(kwargs: dict[str, object], match: str) -> None:
    config = DDPOConfig()
    for name, value in kwargs.items():
        setattr(config, name, value)
    with pytest.raises(TypeError, match=match):
        config.validate()


def test_epoch_divisible_into_optimizer_steps_needs_num_processes() -> None:
    config = DDPOConfig(
        sample_batch_size=4,
        train_batch_size=2,
        sample_num_batches_per_epoch=1,
        train_gradient_accumulation_steps=4,
    )  # fine without the process count: 4 samples per epoch, 8 per optimizer step
    with pytest.raises(ValueError, match=r"samples per epoch .* multiple of samples per optimizer"):
        config.validate(num_processes=2)


def test_epoch_divisibility_rule() -> None:
    config = DDPOConfig(
        sample_batch_size=4,
        train_batch_size=2,
        sample_num_batches_per_epoch=1,
        train_gradient_accumulation_steps=4,
    )
    with pytest.raises(ValueError, match=r"= 4\) must be a multiple .* = 8\)"):
        config.validate(num_processes=1)
    config.sample_num_batches_per_epoch = 2
    config.validate(num_processes=1)
    config.validate(num_processes=4)


def test_resolved_advantage_mode_follows_trl_flag() -> None:
    assert DDPOConfig().resolved_advantage_mode == "global"
    assert DDPOConfig(per_prompt_stat_tracking=True).resolved_advantage_mode == "per_prompt"
    assert DDPOConfig(advantage_mode="group").resolved_advantage_mode == "group"
    assert DDPOConfig(advantage_mode="group_global").resolved_advantage_mode == "group_global"
    assert DDPOConfig(advantage_mode="per_prompt").resolved_advantage_mode == "per_prompt"


@pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes installed"
)
def test_8bit_adam_without_bitsandbytes_is_a_clear_error() -> None:
    with pytest.raises(ImportError, match="train_use_8bit_adam=True needs bitsandbytes"):
        DDPOConfig(train_use_8bit_adam=True)


def test_to_dict_is_flat_and_json_serialisable() -> None:
    import json

    config = DDPOConfig(
        tracker_kwargs={"wandb": {"entity": "me"}}, accelerator_kwargs={"cpu": True}
    )
    flat = config.to_dict()
    json.dumps(flat)
    assert flat["accelerator_kwargs/cpu"] is True
    assert flat["tracker_kwargs/wandb"] == repr({"entity": "me"})
    assert flat["sample_eta"] == 1.0


def test_auto_advantage_mode_takes_the_policy_preference() -> None:
    assert DDPOConfig().resolve_advantage_mode("group") == "group"
    assert DDPOConfig().resolve_advantage_mode(None) == "global"
    assert DDPOConfig(per_prompt_stat_tracking=True).resolve_advantage_mode("group") == (
        "per_prompt"
    )
    assert DDPOConfig(advantage_mode="global").resolve_advantage_mode("group") == "global"
