"""Typed configuration from YAML and key=value overrides."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

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
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(Job, path)
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(Job, tmp_path / "missing.yaml")
