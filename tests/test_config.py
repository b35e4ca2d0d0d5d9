"""Typed configuration from YAML and key=value overrides."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import yaml

from mmembed.config import load_config, save_config
from mmembed.errors import ConfigError


@dataclass
class Optim:
    lr: float = 1e-4
    warmup: int = 10


@dataclass
class Job:
    name: str = "run"
    seed: int = 0
    tasks: list[str] | None = None
    optim: Optim = field(default_factory=Optim)
    mode: str | None = None


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: stage1\noptim:\n  lr: 2e-5\ntasks: [a, b]\n")
    job = load_config(Job, path, ["seed=3", "optim.warmup=5", "tasks=c"])
    assert job == Job(name="stage1", seed=3, tasks=["c"], optim=Optim(lr=2e-5, warmup=5))
    save_config(job, tmp_path / "resolved.yaml")
    assert load_config(Job, tmp_path / "resolved.yaml") == job


@pytest.mark.parametrize("override, message", [
    ("sed=1", "unknown key(s) sed; valid keys: mode, name, optim, seed, tasks"),
    ("seed=three", "seed: expected an integer"),
    ("optim.lr=fast", "lr: expected a number"),
    ("optim.beta=1", "unknown key(s) beta"),
    ("seed", "not of the form key=value"),
])
def test_bad_values_are_named(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(Job, None, [override])
    assert message in str(err.value)


def test_bad_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:2:1: not valid YAML: expected ',' or '\]'") as err:
        load_config(Job, path)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(Job, tmp_path / "missing.yaml")


def test_yaml_with_bytes_that_are_not_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: a\nmode: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1\.yaml:2: not UTF-8 text \(byte 0xe9 at column 10\)"):
        load_config(Job, path)


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "nan", "inf"])
def test_numbers_must_be_finite(value):
    with pytest.raises(ConfigError, match=r"lr: expected a finite number"):
        load_config(Job, None, [f"optim.lr={value}"])


TRAIN_BASE = ["data.mbeir=[{root: data/x}]"]


@pytest.mark.parametrize("override, key", [
    ("optim.lr=0", "optim.lr must be > 0"),
    ("optim.lr=-1e-4", "optim.lr must be > 0"),
    ("optim.lr=.inf", "optim: lr: expected a finite number"),
    ("optim.lr=.nan", "optim: lr: expected a finite number"),
    ("train.temperature=.nan", "train: temperature: expected a finite number"),
    ("train.temperature=0", "train.temperature must be > 0"),
    ("optim.betas=[0.9, 1.0]", "optim.betas[1] must be in [0, 1)"),
    ("optim.betas=[-0.1, 0.9]", "optim.betas[0] must be in [0, 1)"),
    ("optim.betas=[0.9]", "optim.betas must be two numbers"),
    ("optim.eps=-1e-8", "optim.eps must be > 0"),
    ("optim.eps=0", "optim.eps must be > 0"),
    ("optim.warmup_steps=-1", "optim.warmup_steps must be >= 0"),
    ("optim.warmup_ratio=1", "optim.warmup_ratio must be in [0, 1)"),
    ("optim.weight_decay=-0.01", "optim.weight_decay must be >= 0"),
    ("optim.max_grad_norm=-1", "optim.max_grad_norm must be >= 0"),
    ("optim.lr_overrides={'proj[': 1e-3}", "optim.lr_overrides: 'proj[' is not a valid regular expression"),
    ("optim.lr_overrides={'proj': fast}", "optim.lr_overrides['proj']: expected a number"),
    ("optim.lr_overrides={'proj': 0}", "optim.lr_overrides['proj'] must be > 0"),
    ("data.num_workers=-1", "data.num_workers must be >= 0"),
    ("data.num_negatives=-2", "data.num_negatives must be >= 0"),
    ("data.task_homogeneous=1.5", "data.task_homogeneous must be true, false or a share in [0, 1]"),
    ("data.weights={mbeir: -1}", "data.weights.mbeir must be >= 0"),
    ("data.weights={mbeir: 0}", "data.weights: at least one group needs a weight > 0"),
    ("data.examples_per_epoch=0", "data.examples_per_epoch must be >= 1 or null"),
    ("model.lora.r=0", "model.lora.r must be >= 1"),
    ("model.lora.alpha=0", "model.lora.alpha must be >= 1"),
    ("model.lora.dropout=1", "model.lora.dropout must be in [0, 1)"),
    ("model.train_patterns=['(unclosed']", "model.train_patterns[0]: '(unclosed' is not a valid regular expression"),
    ("train.global_batch_size=0", "train.global_batch_size must be >= 1"),
    ("train.max_steps=0", "train.max_steps must be >= 1 or null"),
    ("train.max_minutes=0", "train.max_minutes must be > 0 or null"),
    ("train.num_threads=0", "train.num_threads must be >= 1 or null"),
    ("train.epochs=0", "train.epochs must be >= 1"),
    ("checkpoint.keep_last=0", "checkpoint.keep_last must be >= 1"),
    ("checkpoint.every_steps=-5", "checkpoint.every_steps must be >= 0"),
    ("eval.pools=[everywhere]", "eval.pools: unknown pool 'everywhere'"),
    ("eval.batch_size=0", "eval.batch_size must be >= 1"),
    ("seed=-1", "seed must be >= 0"),
    ("distributed.deepspeed=missing.json", "distributed.deepspeed: file 'missing.json' not found"),
    ("data.mbeir=[{root: ''}]", "data.mbeir[0].root must not be empty"),
])
def test_every_training_field_is_checked_with_its_key(override, key):
    from mmembed.training.config import load_train_config

    with pytest.raises(ConfigError) as err:
        load_train_config(None, [*TRAIN_BASE, override])
    assert key in str(err.value)
    assert "\n" not in str(err.value)


def test_the_shipped_training_configuration_passes(tmp_path):
    from mmembed.training.config import load_train_config

    config = load_train_config("recipes/cpu-default/stage1.yaml")
    assert config.optim.lr > 0


def test_a_bad_training_file_is_named(tmp_path):
    from mmembed.training.config import load_train_config

    path = tmp_path / "stage.yaml"
    path.write_text("data: {mbeir: [{root: x}]}\noptim: {lr: -1}\n")
    with pytest.raises(ConfigError, match=r"stage\.yaml: optim\.lr must be > 0, got -1\.0"):
        load_train_config(path)


@pytest.mark.parametrize("override, key", [
    ("k=0", "k must be >= 1"), ("window=[40, 60]", "window 40-60 must lie within ranks 1-50"),
    ("window=[3]", "window must be two ranks"), ("num_type1=-1", "num_type1 must be >= 0"),
    ("instruction_mode=always", "instruction_mode: unknown mode 'always'"),
    ("batch_size=0", "batch_size must be >= 1"), ("chunk_size=0", "chunk_size must be >= 1"),
    ("seed=-3", "seed must be in [0, 2**32)"),
])
def test_every_mining_field_is_checked_with_its_key(override, key):
    from mmembed.mining import MiningConfig

    with pytest.raises(ConfigError) as err:
        load_config(MiningConfig, None, [override])
    assert key in str(err.value)


def test_a_recipe_is_checked_whole_before_its_first_step(tmp_path):
    from mmembed.recipe import load_recipe
    from mmembed.recipe.run import check_recipe

    stage = tmp_path / "stage.yaml"
    stage.write_text(yaml.safe_dump({"data": {"mbeir": [{"root": str(tmp_path)}]}}))
    bad_stage = tmp_path / "bad.yaml"
    bad_stage.write_text(yaml.safe_dump({"data": {"mbeir": [{"root": str(tmp_path)}]}, "optim": {"eps": 0}}))

    def recipe(steps: list, models: dict) -> object:
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"), "data": str(tmp_path), "steps": steps,
                                        "evaluate": {"models": models}}))
        return load_recipe(path)

    mine = {"name": "mine", "mine": {"data": str(tmp_path), "encoder": "stage1"}}
    check_recipe(recipe([{"name": "stage1", "train": str(stage)}, mine], {"m": "stage1"}))  # all fine
    with pytest.raises(ConfigError, match=r"recipe step stage2: .*bad\.yaml: optim\.eps must be > 0"):
        check_recipe(recipe([{"name": "stage1", "train": str(stage)}, {"name": "stage2", "train": str(bad_stage)}],
                            {"m": "stage1"}))
    with pytest.raises(ConfigError, match=r"recipe step mine: mine\.encoder: 'stage1' is a step that does not come"):
        check_recipe(recipe([mine, {"name": "stage1", "train": str(stage)}], {"m": "stage1"}))
    with pytest.raises(ConfigError, match=r"recipe evaluate: evaluate\.models\.m: 'nothing' is neither"):
        check_recipe(recipe([{"name": "stage1", "train": str(stage)}], {"m": "nothing"}))
