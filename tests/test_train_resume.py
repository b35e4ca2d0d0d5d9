"""``mmembed train``: a run killed with SIGKILL and resumed follows the uninterrupted run exactly,
and two processes under torchrun train the same weights as one process with the same global batch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mmembed.errors import ConfigError
from mmembed.training.config import load_train_config
from mmembed.training.monitor import read_metrics
from mmembed.training.trainer import Trainer

pytest.importorskip("accelerate")
pytest.importorskip("peft")

from toy import make_toy_mbeir  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    return make_toy_mbeir(tmp_path_factory.mktemp("toy") / "toy")


def write_config(path: Path, toy_root: Path, **model) -> Path:
    config = {"seed": 3, "model": {"encoder": "cpu-default", **model},
              "data": {"mbeir": [{"root": str(toy_root)}]},
              "train": {"global_batch_size": 6, "max_steps": 8, "num_threads": 1},
              "optim": {"lr": 1e-3, "warmup_steps": 2},
              "checkpoint": {"every_steps": 2, "keep_last": 3},
              "logging": {"progress": False, "plot": False}}
    path.write_text(yaml.safe_dump(config))
    return path


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "mmembed.cli.main", "-q", "train", *args]


def losses(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(out / "metrics.jsonl") if "loss" in r]


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "final" / "model.safetensors"))


def test_sigkill_then_resume_follows_the_uninterrupted_run(toy_root, tmp_path):
    # dropout in MiniLM and in LoRA: the resumed run must also restore the RNG exactly
    config = write_config(tmp_path / "run.yaml", toy_root, lora={"enabled": True, "r": 4, "alpha": 8, "dropout": 0.1})
    reference = tmp_path / "reference"
    Trainer(load_train_config(config, [f"output_dir={reference}"])).train()

    killed = tmp_path / "killed"
    proc = subprocess.Popen(cli(str(config), "--output-dir", str(killed)), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (killed / "checkpoints" / "step-00000002" / "trainer_state.json").is_file():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint within the time limit"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert not (killed / "final").exists(), "the run finished before it could be killed"

    resumed = subprocess.run(cli(str(config), "--output-dir", str(killed), "--resume"), env=ENV,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from 0" not in resumed.stdout, resumed.stdout

    expected, got = losses(reference), losses(killed)
    assert [s for s, _ in got] == list(range(1, 9)) == [s for s, _ in expected]
    for (step, a), (_, b) in zip(expected, got):
        assert abs(a - b) <= 1e-6, f"step {step}: {a} != {b}"
    ref_w, got_w = final_weights(reference), final_weights(killed)
    assert set(ref_w) == set(got_w)
    for name, value in ref_w.items():
        torch.testing.assert_close(got_w[name], value, atol=1e-6, rtol=0, msg=name)


def test_resume_and_restart_refuse_what_would_mix_runs(toy_root, tmp_path):
    config = write_config(tmp_path / "run.yaml", toy_root)
    out = tmp_path / "run"
    Trainer(load_train_config(config, [f"output_dir={out}", "train.max_steps=2"])).train()
    changed = Trainer(load_train_config(config, [f"output_dir={out}", "optim.lr=0.5"]))
    with pytest.raises(ConfigError, match="optim.lr"):
        changed.train(resume=True)
    with pytest.raises(ConfigError, match="--resume"):  # a fresh run into a directory with checkpoints
        changed.train()


@pytest.mark.slow
def test_torchrun_two_processes_train_the_same_weights_as_one(toy_root, tmp_path):
    # no dropout: with it, the masks depend on how the batch is split over processes
    config = write_config(tmp_path / "run.yaml", toy_root, dropout=False)
    common = ["--set", "train.max_steps=3", "--set", "optim.lr=1e-4", "--set", "checkpoint.every_steps=0"]
    two = tmp_path / "two"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "mmembed.cli.main", "-q", "train", str(config), "--output-dir", str(two), *common],
                         env=ENV, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    one = tmp_path / "one"
    overrides = [f"output_dir={one}", "train.max_steps=3", "optim.lr=1e-4", "checkpoint.every_steps=0"]
    Trainer(load_train_config(config, overrides)).train()

    assert len(losses(one)) == len(losses(two)) == 3
    for (step, a), (_, b) in zip(losses(one), losses(two)):
        assert abs(a - b) <= 1e-5, f"step {step}: {a} != {b}"
    w_one, w_two = final_weights(one), final_weights(two)
    assert set(w_one) == set(w_two) and w_one
    for name, value in w_one.items():
        torch.testing.assert_close(w_two[name], value, atol=1e-5, rtol=0, msg=name)



# ----------------------------------------------------------------------------- damaged checkpoints, divergence


@pytest.fixture(scope="module")
def four_steps(toy_root, tmp_path_factory) -> tuple[Path, Path]:
    """A run of 4 steps with checkpoints at 2 and 4, and its configuration."""
    tmp = tmp_path_factory.mktemp("four")
    config = write_config(tmp / "run.yaml", toy_root)
    out = tmp / "run"
    Trainer(load_train_config(config, [f"output_dir={out}", "train.max_steps=4"])).train()
    return config, out


def damaged_copy(source: Path, target: Path, damage) -> Path:
    import shutil

    shutil.copytree(source, target)
    damage(target / "checkpoints" / "step-00000004")
    return target


def truncate(name: str):
    def damage(checkpoint: Path) -> None:
        path = checkpoint / name
        path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])
    return damage


@pytest.mark.parametrize("damage", [truncate("trainer_state.json"), truncate("trainable.safetensors"),
                                    truncate("rng.json"), lambda c: (c / "config.yaml").unlink(),
                                    truncate("optimizer.pt")],
                         ids=["trainer_state", "trainable", "rng", "no-config", "optimizer"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(four_steps, tmp_path, damage, caplog):
    config, complete = four_steps
    out = damaged_copy(complete, tmp_path / "run", damage)
    trainer = Trainer(load_train_config(config, [f"output_dir={out}", "train.max_steps=6"]))
    result = trainer.train(resume=True)
    assert result.resumed_from == 2 and result.steps == 6
    assert "skipping damaged checkpoint" in caplog.text and "step-00000004" in caplog.text
    # from step 2 on the run follows the undamaged one: steps 3 and 4 give the same losses again
    again = {s: v for s, v in losses(out)}
    for step, value in losses(complete):
        if step in (3, 4):
            assert abs(again[step] - value) <= 1e-6


def test_an_explicit_damaged_checkpoint_is_an_error_naming_the_file(four_steps, tmp_path):
    config, complete = four_steps
    out = damaged_copy(complete, tmp_path / "run", lambda c: (c / "config.yaml").unlink())
    trainer = Trainer(load_train_config(config, [f"output_dir={out}", "train.max_steps=6"]))
    with pytest.raises(ConfigError, match=r"step-00000004/config\.yaml: missing.*learning rate"):
        trainer.train(resume=out / "checkpoints" / "step-00000004")


def test_every_checkpoint_damaged_is_an_error_not_a_fresh_start(four_steps, tmp_path):
    config, complete = four_steps
    out = damaged_copy(complete, tmp_path / "run", truncate("rng.json"))
    truncate("trainable.safetensors")(out / "checkpoints" / "step-00000002")
    trainer = Trainer(load_train_config(config, [f"output_dir={out}", "train.max_steps=6"]))
    with pytest.raises(ConfigError, match="no complete checkpoint to resume from"):
        trainer.train(resume=True)


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(toy_root, tmp_path):
    from mmembed.training.trainer import TrainingDivergedError

    config = write_config(tmp_path / "run.yaml", toy_root)
    out = tmp_path / "run"
    trainer = Trainer(load_train_config(config, [f"output_dir={out}"]))
    real, calls = trainer.loss_fn, []

    def nan_at_step_3(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) == 3 else loss

    trainer.loss_fn = nan_at_step_3
    with pytest.raises(TrainingDivergedError, match=r"diverged at step 3: the loss is nan.*step-00000002"):
        trainer.train()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]
    assert not (out / "final").exists()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_the_cli_reports_bad_training_input_in_one_line(toy_root, tmp_path):
    import shutil

    no_instructions = tmp_path / "bare"
    shutil.copytree(toy_root, no_instructions)
    shutil.rmtree(no_instructions / "instructions")
    config = write_config(tmp_path / "run.yaml", no_instructions)
    cases = [  # overrides -> what the one error line must name
        (["optim.lr=.inf"], "optim: lr: expected a finite number"),
        (["data.instruction_mode=none", "model.settings={no_such_setting: 1}"],
         "model.settings.no_such_setting: not a setting of 'cpu-default'"),
        ([], "query_instructions.tsv not found; data.instruction_mode 'random' needs it"),
    ]
    for overrides, message in cases:
        sets = [arg for item in overrides for arg in ("--set", item)]
        run = subprocess.run(cli(str(config), "--output-dir", str(tmp_path / "o"), *sets),
                             env=ENV, capture_output=True, text=True, timeout=300)
        assert run.returncode == 2, run.stderr[-2000:]
        assert message in run.stderr and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert not (tmp_path / "o" / "metrics.jsonl").exists()


def test_every_image_is_checked_before_the_first_step(toy_root, tmp_path, caplog):
    import shutil

    from mmembed.errors import ImageError

    root = tmp_path / "toy"
    shutil.copytree(toy_root, root)
    images = sorted((root / "images").glob("*.png"))
    images[0].write_bytes(b"not a png")
    images[1].unlink()
    config = write_config(tmp_path / "run.yaml", root)
    with pytest.raises(ImageError) as err:
        Trainer(load_train_config(config, [f"output_dir={tmp_path / 'o'}"]))
    text = str(err.value)
    assert "\n" not in text and "field 'img_path'" in text and "and 1 more image problem(s)" in text
    assert images[0].name in text or images[1].name in text
    assert f"{images[0].name}, item" in caplog.text and "unreadable image" in caplog.text
    assert f"{images[1].name}, item" in caplog.text and "image file not found" in caplog.text
    assert not (tmp_path / "o").exists()
