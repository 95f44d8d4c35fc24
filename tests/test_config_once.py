"""A run's configuration is resolved once: flags map 1:1 to configuration keys, a ``--config`` file gives the
same settings as data, every derived value (``--compile`` auto included) is settled before training starts,
and the configuration is then frozen and written once."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from ltsam.cli import main
from ltsam.config import TrainConfig, resolve
from ltsam.run.files import CONFIG_NAME, METRICS_NAME
from ltsam.train_flags import ALIASES, COMMAND_FLAGS, config_keys, flag_table, setting_names

FAST = ["--epochs", "1", "--batch-size", "64", "--no-progress"]


def _config(run: Path) -> dict:
    saved = json.loads((run / CONFIG_NAME).read_text())
    saved.pop("out")
    return saved


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(ln) for ln in (run / METRICS_NAME).read_text().splitlines()]
    for row in rows:
        row.pop("seconds")
    return rows


# ---------------------------------------------------------------- flags <-> configuration keys
def test_every_flag_sets_one_configuration_key_or_steers_the_command() -> None:
    actions = {id(a): a for a in flag_table().values()}.values()
    dests = {a.dest for a in actions}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for action in actions:
        assert action.dest in set(setting_names()) | set(COMMAND_FLAGS), action.option_strings
    for key in config_keys():  # every configuration key a user may set has its flag, named as the key
        assert key in dests, key
        assert "--" + key.replace("_", "-") in flag_table()[key].option_strings or key in ("wd",), key
    assert set(ALIASES.values()) <= fields  # an alias sets a real field
    assert not (set(COMMAND_FLAGS) & set(setting_names()))  # a flag steers the command or sets the run, not both


# ---------------------------------------------------------------- --config FILE
def test_a_config_file_gives_what_the_same_flags_give_and_flags_override_it(tmp_path: Path, capsys) -> None:
    flags = ["--loss", "LDAM", "--lr", "1e-2", "--head", "linear", "--cos_lr", "--rho-steps", "0.1", "0.2", "0.3",
             "0.4", "--imb-factor", "0.2"]
    assert main(["train", *flags, *FAST, "--out", str(tmp_path / "flags")]) == 0
    (tmp_path / "c.yaml").write_text("loss: LDAM\nlr: 1e-2\nhead: linear\ncos_lr: true\n"  # YAML reads 1e-2 as a word
                                     "rho-steps: [0.1, 0.2, 0.3, 0.4]\n--imb-factor: 0.2\nepochs: 7\n")
    assert main(["train", "--config", str(tmp_path / "c.yaml"), *FAST, "--out", str(tmp_path / "file")]) == 0
    capsys.readouterr()
    assert _config(tmp_path / "file") == _config(tmp_path / "flags")  # --epochs 1 (a flag) beat the file's 7
    assert _rows(tmp_path / "file") == _rows(tmp_path / "flags")
    saved = _config(tmp_path / "file")
    assert (saved["loss"], saved["lr"], saved["use_norm"], saved["lr_schedule"], saved["epochs"]) == \
        ("ldam", 0.01, False, "cosine", 1)


def test_a_runs_own_config_json_fed_back_trains_the_same_run(tmp_path: Path, capsys) -> None:
    assert main(["train", *FAST, "--out", str(tmp_path / "a"), "--val-per-class", "2", "--seed", "3"]) == 0
    assert main(["train", "--config", str(tmp_path / "a" / CONFIG_NAME), "--out", str(tmp_path / "b"),
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert _config(tmp_path / "b") == _config(tmp_path / "a")
    assert _rows(tmp_path / "b") == _rows(tmp_path / "a")  # every figure of every epoch, bit for bit


@pytest.mark.parametrize("body, name, words", [
    ("colour: red\n", "c.yaml", "'colour' is not an `ltsam train` setting"),
    ("resume: runs/x\n", "c.yaml", "steers the command"),
    ("loss: [ce, ldam]\n", "c.yaml", "--loss takes one value"),
    ("adaptive: 3\n", "c.yaml", "--adaptive is a switch"),
    ("lr: fast\n", "c.yaml", "--lr"),
    ("- a\n- b\n", "c.yaml", "must hold a mapping"),
    ("{\"lr\": 0.1,}", "c.json", "is not valid JSON"),
    ("head: round\n", "c.yaml", "--head 'round': choose one of auto, linear, cosine"),
])
def test_a_bad_config_file_is_one_line_and_exit_2(tmp_path: Path, capsys, body: str, name: str, words: str) -> None:
    (tmp_path / name).write_text(body)
    assert main(["train", "--config", str(tmp_path / name), *FAST, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and words in err, err
    assert not (tmp_path / "r").exists()  # nothing was touched


def test_config_with_resume_or_a_missing_file_is_refused(tmp_path: Path, capsys) -> None:
    assert main(["train", "--config", str(tmp_path / "none.yaml"), *FAST]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "c.yaml").write_text("lr: 0.1\n")
    assert main(["train", "--resume", str(tmp_path), "--config", str(tmp_path / "c.yaml")]) == 2
    assert "leave --config out" in capsys.readouterr().err


# ---------------------------------------------------------------- settled once, frozen, written once
def test_the_configuration_is_written_once_and_the_trainer_changes_nothing(tmp_path: Path, capsys,
                                                                          monkeypatch) -> None:
    import ltsam.io
    from ltsam.trainer import Trainer

    writes: list[Path] = []
    real = ltsam.io.write_json
    monkeypatch.setattr(ltsam.io, "write_json", lambda path, value, *a, **k: (writes.append(Path(path)),
                                                                              real(path, value, *a, **k))[1])
    frozen_at: list[dict] = []
    original = Trainer.__init__

    def spy(self, cfg, *args, **kwargs):
        frozen_at.append(cfg.to_dict())  # what the command hands the trainer
        original(self, cfg, *args, **kwargs)
        assert self.cfg is cfg and self.cfg.frozen and cfg.to_dict() == frozen_at[0]

    monkeypatch.setattr(Trainer, "__init__", spy)
    assert main(["train", *FAST, "--out", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    assert [p.name for p in writes].count(CONFIG_NAME) == 1
    assert frozen_at[0]["compile"] is False  # settled (auto: a short CPU run) before the trainer was built
    assert _config(tmp_path / "r") | {"out": frozen_at[0]["out"]} == frozen_at[0]


def test_a_frozen_configuration_refuses_every_change() -> None:
    cfg = resolve({}).freeze()
    for name, value in (("epochs", 3), ("margin", 0.3)):  # a field and a registered option
        with pytest.raises(AttributeError, match="frozen"):
            setattr(cfg, name, value)
    before = cfg.epochs
    copy = dataclasses.replace(cfg, epochs=before + 1, options=dict(cfg.options))  # a changed copy: new and open
    assert copy.epochs == before + 1 and not copy.frozen and cfg.epochs == before


def test_compile_auto_is_settled_from_the_run_length_before_training(monkeypatch) -> None:
    from ltsam.acceleration import CPU_COMPILE_MIN_STEPS
    from ltsam.run.runtime import settle

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    batch, size = 64, 515  # 9 batches an epoch (the last one short)
    epochs = math.ceil(CPU_COMPILE_MIN_STEPS / 9)
    for n_epochs, expected in ((epochs - 1, False), (epochs, True)):
        cfg = resolve({"device": "cpu", "batch_size": batch, "epochs": n_epochs})
        assert settle(cfg, size).compile is expected and cfg.frozen
    for given in (True, False):  # --compile / --no-compile decide
        assert settle(resolve({"device": "cpu", "epochs": 1, "compile": given}), size).compile is given
    # under torchrun each rank takes its share (258 images: 5 batches an epoch), so the same run is shorter
    short = {"device": "cpu", "batch_size": batch, "epochs": math.ceil(CPU_COMPILE_MIN_STEPS / 5) - 1}
    assert settle(resolve(short), size).compile is True  # one process: 9 batches an epoch
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert settle(resolve(short), size).compile is False


@pytest.mark.parametrize("settings", [
    {},  # erm on digits: in-memory batches
    {"train_rule": "resample"},  # the class-balanced sampler draws as many as there are images
    {"method": "glmc", "epochs": 2},
    {"val_per_class": 3},  # the held-out images leave the training set
])
def test_steps_per_epoch_is_what_the_batch_source_yields(tmp_path: Path, settings: dict) -> None:
    from ltsam.run.runtime import steps_per_epoch
    from ltsam.trainer import Trainer

    cfg = resolve({"device": "cpu", "batch_size": 50, "compile": False, **settings})
    trainer = Trainer(cfg, tmp_path / "r", progress=False)
    assert len(trainer.source) == steps_per_epoch(trainer.data.train_size, 50)
    assert sum(1 for _ in trainer.source) == len(trainer.source)


def test_steps_per_epoch_on_ranks_matches_the_sharded_source() -> None:
    import torch

    from ltsam.data.sources import InMemoryBatchSource
    from ltsam.run.runtime import steps_per_epoch

    images, targets = torch.zeros(103, 3, 4, 4, dtype=torch.uint8), torch.zeros(103, dtype=torch.long)
    zeros = torch.zeros(3)
    for world in (1, 2, 3, 4):
        for rank in range(world):
            source = InMemoryBatchSource(images, targets, 10, zeros, zeros + 1, rank=rank, world=world)
            assert len(source) == steps_per_epoch(103, 10, world), (world, rank)
