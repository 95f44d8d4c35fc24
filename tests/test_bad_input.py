"""Bad numbers, damaged files and divergence: one clear line, a non-zero exit, nothing lost.

Every case of issue 10's items 4 and 5: non-finite flags, impossible counts, images and list files
that cannot be read, damaged or malicious checkpoints, wrong-typed config.json, Hessian flags, and
output paths that cannot be written. A run whose loss diverges stops with its last finite checkpoint.
"""

from __future__ import annotations

import builtins
import json
import re
import struct
import zlib
from pathlib import Path

import pytest
import torch

from ltsam.cli import main
from ltsam.io import json_safe, to_json, write_json
from tests.conftest import FAST_DIGITS
from tests.test_cli_errors import _assert_one_line as _one_line
from tests.test_listfile import make_list_dataset


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err




def _strict_json(text: str):
    """json.loads that refuses the NaN/Infinity tokens Python's json would accept."""
    def refuse(token: str):
        raise AssertionError(f"non-JSON token {token}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", *FAST_DIGITS, "--epochs", "1", "--out", str(out)]) == 0
    return out


# -- item 4: non-finite values -----------------------------------------------------------------
@pytest.mark.parametrize("flags, word", [
    (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"), (["--lr", "-inf"], "--lr"),
    (["--wd", "nan"], "--wd"), (["--margin", "nan"], "--margin"), (["--focal-gamma", "nan"], "--focal-gamma"),
    (["--tau", "nan"], "--tau"), (["--gamma", "inf"], "--gamma"), (["--rho", "nan"], "--rho"),
    (["--min-rho", "nan"], "--min-rho"), (["--max-rho", "inf"], "--max-rho"), (["--beta", "nan"], "--beta"),
    (["--momentum", "nan"], "--momentum"), (["--imb-factor", "nan"], "--imb-factor"),
    (["--rho-schedule", "step", "--rho-steps", "0.1", "nan", "0.2", "0.3"], "--rho-steps"),
    (["--method", "glmc", "--contrast-weight", "nan"], "--contrast-weight"),
])
def test_non_finite_flags_are_refused(tmp_path: Path, capsys, flags: list[str], word: str) -> None:
    out = tmp_path / "run"
    code, _, err = _run(["train", *FAST_DIGITS, "--out", str(out), *flags], capsys)
    assert code == 2
    _one_line(err, word)
    assert not out.exists()


def test_diverging_run_stops_with_its_last_finite_checkpoint(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    code, _, err = _run(["train", *FAST_DIGITS, "--epochs", "8", "--lr", "1e4", "--out", str(out)], capsys)
    assert code == 3
    line = _one_line(err, "diverged", "non-finite", "--lr")
    epochs = [_strict_json(ln)["epoch"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(len(epochs)))  # each finished epoch once, none after the divergence
    assert re.search(rf"epoch {len(epochs) + 1}\b", line)  # the epoch named is the one that diverged
    if epochs:  # the checkpoint kept is the last finished epoch's, and finite
        ckpt = torch.load(out / "last.pt", weights_only=True)
        assert ckpt["epoch"] == len(epochs)
        assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())
    for path in out.rglob("*.json*"):  # nothing ltsam wrote holds NaN/Infinity tokens
        for text in path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]:
            _strict_json(text)


def test_json_files_never_hold_nan_tokens(tmp_path: Path) -> None:
    data = {"a": float("nan"), "b": [1.0, float("inf"), {"c": -float("inf")}], "d": 2.5, "e": None, "f": 3}
    assert json_safe(data) == {"a": None, "b": [1.0, None, {"c": None}], "d": 2.5, "e": None, "f": 3}
    write_json(tmp_path / "x.json", data)
    assert _strict_json((tmp_path / "x.json").read_text())["b"] == [1.0, None, {"c": None}]
    assert "NaN" not in to_json(data) and "Infinity" not in to_json(data)


# -- item 5: impossible numbers ----------------------------------------------------------------
@pytest.mark.parametrize("flags, words", [
    (["--seed", "-1"], ["--seed", "0"]), (["--seed", str(2**32)], ["--seed"]),
    (["--rand-number", "-1"], ["--rand-number"]), (["--eval-batch-size", "0"], ["--eval-batch-size"]),
    (["--threads", "0"], ["--threads"]), (["--image-size", "0"], ["--image-size"]),
    (["--lr", "1e300"], ["--lr", "float32"]), (["--wd", "-1"], ["--wd"]), (["--workers", "-1"], ["--workers"]),
    (["--drw-epoch", "-1"], ["--drw-epoch"]), (["--stop-after", "0"], ["--stop-after"]),
    (["--stop-after", "-2"], ["--stop-after"]),
])
def test_impossible_numbers_are_refused(tmp_path: Path, capsys, flags: list[str], words: list[str]) -> None:
    out = tmp_path / "run"
    code, _, err = _run(["train", *FAST_DIGITS, "--out", str(out), *flags], capsys)
    assert code == 2
    _one_line(err, *words)
    assert not out.exists()


def test_drw_epoch_beyond_the_run_is_warned(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    code, stdout, _ = _run(["train", *FAST_DIGITS, "--epochs", "1", "--train-rule", "drw", "--drw-epoch", "5",
                            "--out", str(out)], capsys)
    assert code == 0
    assert "warning: --drw-epoch 5" in stdout and "never switches on" in stdout


def test_config_json_states_the_resolved_values(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["train", *FAST_DIGITS, "--epochs", "2", "--rho-schedule", "step", "--out", str(out)]) == 0
    cfg = _strict_json((out / "config.json").read_text())
    # digits defaults: LDAM + DRW; DRW from epoch 160 of 200 scaled to 2 epochs -> 2; LDAM -> cosine head
    assert cfg["drw_epoch"] == 2 and cfg["use_norm"] is True
    assert cfg["rho_steps"] == [0.05, 0.1, 0.5, 0.6] and cfg["compile"] is False


# -- item 5: images and list files that cannot be read -------------------------------------------
def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height pixels (no pixel data): PIL checks the size on open."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_decompression_bomb_in_a_folder_data_set(image_folder: Path, tmp_path: Path, capsys) -> None:
    bomb = image_folder / "train" / "class_00" / "0000.png"  # the first image, always kept
    _png_header_only(bomb, 40_000, 40_000)  # 1.6e9 pixels: over twice PIL's limit
    out = tmp_path / "run"
    code, _, err = _run(["train", "--dataset", "folder", "--data-root", str(image_folder), "--epochs", "1",
                         "--arch", "small_cnn", "--imb-type", "none", "--out", str(out), "--no-progress"], capsys)
    assert code == 2
    _one_line(err, str(bomb), "too large")
    assert not out.exists()


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_file_in_a_list_is_named_with_its_line(tmp_path: Path, capsys, workers: int) -> None:
    root = make_list_dataset(tmp_path / "imnet")
    lines = (root / "ImageNet_LT_train.txt").read_text().splitlines()
    bad = root / lines[4].split()[0]
    bad.write_bytes(b"this is not a JPEG")
    out = tmp_path / "run"
    code, _, err = _run(["train", "--dataset", "imagenet_lt", "--data-root", str(root), "--image-size", "16",
                         "--arch", "resnet10", "--epochs", "1", "--batch-size", "64", "--optimizer", "sgd",
                         "--workers", str(workers), "--out", str(out), "--no-progress"], capsys)
    assert code == 2
    _one_line(err, str(bad), "ImageNet_LT_train.txt:5", "cannot read image")


# -- item 5: damaged, malicious and foreign files ------------------------------------------------
class _RunsCode:
    """Pickles to a call of open(marker, 'w'): loading it unsafely would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (str(self.marker), "w")


def test_a_pickle_that_would_run_code_is_refused(trained_run: Path, tmp_path: Path, capsys) -> None:
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "ltsam-checkpoint-v1", "model": _RunsCode(marker)}, evil)
    code, _, err = _run(["eval", str(evil)], capsys)
    assert code == 2
    _one_line(err, str(evil))
    run = tmp_path / "run"  # the same file as a run's last.pt, resumed
    run.mkdir()
    (run / "config.json").write_text((trained_run / "config.json").read_text())
    (run / "last.pt").write_bytes(evil.read_bytes())
    code, _, err = _run(["train", "--resume", str(run), "--epochs", "2"], capsys)
    assert code == 2
    _one_line(err)
    assert not marker.exists()


@pytest.mark.parametrize("drop", ["model", "model_meta", "config", "epoch", "optimizer"])
def test_checkpoint_tagged_as_ltsam_but_missing_keys(trained_run: Path, tmp_path: Path, capsys,
                                                     drop: str) -> None:
    ckpt = torch.load(trained_run / "last.pt", weights_only=True)
    del ckpt[drop]
    path = tmp_path / "damaged.pt"
    torch.save(ckpt, path)
    code, _, err = _run(["eval", str(path)], capsys)
    assert code == 2
    _one_line(err, str(path), drop)


def test_checkpoint_with_a_damaged_model_description(trained_run: Path, tmp_path: Path, capsys) -> None:
    ckpt = torch.load(trained_run / "last.pt", weights_only=True)
    del ckpt["model_meta"]["num_classes"]
    path = tmp_path / "damaged.pt"
    torch.save(ckpt, path)
    code, _, err = _run(["eval", str(path)], capsys)
    assert code == 2
    _one_line(err, "num_classes")


@pytest.mark.parametrize("key, value", [("epochs", "ten"), ("lr", "fast"), ("seed", 1.5), ("loss", 3),
                                        ("download", "yes"), ("rho_steps", [0.1, "a", 0.2, 0.3])])
def test_config_json_with_wrong_types(trained_run: Path, tmp_path: Path, capsys, key: str, value) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for name in ("last.pt", "metrics.jsonl"):
        (run / name).write_bytes((trained_run / name).read_bytes())
    cfg = json.loads((trained_run / "config.json").read_text())
    cfg[key] = value
    (run / "config.json").write_text(json.dumps(cfg))
    def files() -> dict[str, bytes]:  # the run's files; the lock ltsam takes (and releases) aside
        return {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".ltsam-lock"}

    before = files()
    code, _, err = _run(["train", "--resume", str(run), "--epochs", "2"], capsys)
    assert code == 2
    _one_line(err, repr(key))
    assert files() == before


# -- item 5: the Hessian and eval commands -------------------------------------------------------
@pytest.mark.parametrize("flags, word", [
    (["--max-per-class", "0"], "--max-per-class"), (["--max-per-class", "-3"], "--max-per-class"),
    (["--batch-size", "0"], "--batch-size"), (["--slq-steps", "0"], "--slq-steps"),
    (["--slq-runs", "0"], "--slq-runs"), (["--power-iters", "0"], "--power-iters"),
    (["--trace-tol", "nan"], "--trace-tol"), (["--seed", "-1"], "--seed"),
])
def test_hessian_flags(trained_run: Path, capsys, flags: list[str], word: str) -> None:
    code, _, err = _run(["hessian", str(trained_run), *flags], capsys)
    assert code == 2
    _one_line(err, word)
    assert not (trained_run / "hessian").exists()


def test_hessian_out_a_file(trained_run: Path, tmp_path: Path, capsys) -> None:
    target = tmp_path / "taken.txt"
    target.write_text("mine")
    code, _, err = _run(["hessian", str(trained_run), "--out", str(target), "--classes", "0"], capsys)
    assert code == 2
    _one_line(err, "--out", "is a file")
    assert target.read_text() == "mine"


@pytest.mark.parametrize("where", ["folder", "read-only", "missing-folder"])
def test_eval_json_that_cannot_be_written(trained_run: Path, tmp_path: Path, capsys, where: str) -> None:
    path = {"folder": tmp_path, "read-only": Path("/proc/ltsam-results.json"),
            "missing-folder": tmp_path / "no" / "such" / "r.json"}[where]
    code, _, err = _run(["eval", str(trained_run), "--json", str(path)], capsys)
    assert code == 2
    _one_line(err, "--json", str(path))


# -- item 5: run folders that cannot be made ------------------------------------------------------
@pytest.mark.parametrize("where", ["under-a-file", "read-only", "symlink"])
def test_out_that_cannot_be_a_run_folder(tmp_path: Path, capsys, where: str) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    target = tmp_path / "real_run"
    if where == "symlink":  # a finished run reached through a link: --overwrite must not follow it
        assert main(["train", *FAST_DIGITS, "--epochs", "1", "--out", str(target)]) == 0
        capsys.readouterr()
        (tmp_path / "link").symlink_to(target)
    out = {"under-a-file": blocker / "run", "read-only": Path("/proc/ltsam-run"), "symlink": tmp_path / "link"}[where]
    before = sorted(p.name for p in target.iterdir()) if target.exists() else None
    code, _, err = _run(["train", *FAST_DIGITS, "--out", str(out), "--overwrite"], capsys)
    assert code == 2
    _one_line(err, "--out", str(out))
    assert blocker.read_text() == "mine"
    assert (sorted(p.name for p in target.iterdir()) if target.exists() else None) == before
