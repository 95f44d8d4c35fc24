"""Weights files handed to ``--pretrained`` (offline): a file must fit the model or be refused in one line, exit 2.

A timm state dict of another architecture and an ltsam checkpoint of the same model (keys ``net.…``) are refused,
naming how many backbone tensors matched (timm loads non-strictly once the head is replaced: they used to train
from random weights); a fitting file still loads exactly; a truncated or garbage ``.safetensors`` and a pickle that
would run code are one line for ``timm:`` and ``clip:`` alike, and the pickle's code never runs; an unreachable hub
fails within seconds.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

timm = pytest.importorskip("timm")
open_clip = pytest.importorskip("open_clip")

from ltsam.cli import main  # noqa: E402
from ltsam.models import build_model  # noqa: E402
from tests.pretrained_helpers import TINY_CLIP, registered_clip_configs, save_weights  # noqa: E402

ARGV = ["train", "--dataset", "digits", "--epochs", "1", "--batch-size", "64", "--loss", "ce", "--no-progress",
        "--threads", "1", "--input-size", "32"]
CLIP = "ltsam-Tiny-Weights"
OPTIONS = dict(tune="full", input_size=None)  # the file's size: position embeddings as saved


@pytest.fixture(scope="module", autouse=True)
def tiny_config(tmp_path_factory):
    yield from registered_clip_configs(tmp_path_factory.mktemp("open_clip"), {CLIP: TINY_CLIP})


def _refused(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_another_architectures_state_dict_is_refused(tmp_path, capsys):
    path = save_weights(timm.create_model("test_resnet").state_dict(), tmp_path / "resnet.pt")
    err = _refused(capsys, [*ARGV, "--arch", "timm:test_vit", "--pretrained", str(path), "--out",
                            str(tmp_path / "r")])
    total = sum(1 for k in timm.create_model("test_vit").state_dict() if not k.startswith("head."))
    assert f"only 0 of the backbone's {total} tensors" in err and "another architecture" in err, err


def test_an_ltsam_checkpoint_of_the_same_model_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*ARGV, "--arch", "timm:test_vit", "--pretrained", "none", "--out", str(run)]) == 0
    capsys.readouterr()
    err = _refused(capsys, [*ARGV, "--arch", "timm:test_vit", "--pretrained", str(run / "last.pt"), "--out",
                            str(tmp_path / "r")])
    assert "only 0 of the backbone's" in err and "ltsam checkpoint" in err and "--resume" in err, err


@pytest.mark.parametrize("arch, head", [("test_vit", "head."), ("test_resnet", "fc.")])
def test_a_fitting_file_loads_exactly(tmp_path, arch, head):
    """A state dict of the same architecture (1000 classes) loads: every tensor but the replaced head is the
    file's, bitwise."""
    torch.manual_seed(2)
    state = timm.create_model(arch).state_dict()
    path = save_weights(state, tmp_path / "w.safetensors")
    model = build_model(f"timm:{arch}", 10, False, 1, options=OPTIONS | dict(pretrained=str(path)), weights=True)
    loaded = model.net.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if not k.startswith(head))
    assert loaded[head + "weight"].shape[0] == 10


class _Runs:
    """Unpickled, it would create the file ``marker`` (a pickle that runs code)."""

    marker = ""

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _bad_files(folder: Path) -> dict[str, Path]:
    good = folder / "good.safetensors"
    save_weights(timm.create_model("test_vit").state_dict(), good)
    data = good.read_bytes()
    (folder / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (folder / "garbage.safetensors").write_bytes(os.urandom(4096))
    evil = _Runs()
    evil.marker = str(folder / "code-ran")
    torch.save({"visual.proj": torch.zeros(1), "x": evil}, folder / "evil.pt")
    return {name: folder / f"{name}" for name in ("truncated.safetensors", "garbage.safetensors", "evil.pt")}


@pytest.mark.parametrize("arch", ["timm:test_vit", "clip:" + CLIP.lower()])
@pytest.mark.parametrize("name", ["truncated.safetensors", "garbage.safetensors", "evil.pt"])
def test_a_broken_or_malicious_file_is_one_line(tmp_path, capsys, arch, name):
    path = _bad_files(tmp_path)[name]
    err = _refused(capsys, [*ARGV, "--arch", arch, "--pretrained", str(path), "--out", str(tmp_path / "r")])
    assert f"--pretrained {path}" in err and "not weights of" in err, err
    assert not (tmp_path / "code-ran").exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the socket is: connections are refused


@pytest.mark.parametrize("arch", ["timm:test_vit", "clip:rn50"])
def test_an_unreachable_hub_fails_within_seconds(tmp_path, arch):
    """The hub endpoint a closed local port and the cache empty: one line at once, not after huggingface_hub's
    retries (about 25 s a file before)."""
    env = dict(os.environ, HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}", HF_HUB_CACHE=str(tmp_path / "cache"),
               HF_HOME=str(tmp_path / "hf"), PYTHONPATH=os.pathsep.join(sys.path))
    env.pop("HF_HUB_OFFLINE", None)
    code = ("import time, sys; from ltsam.models import build_model; t = time.time()\n"
            "from ltsam.errors import UserError\n"
            f"try: build_model({arch!r}, 10, False, 1, options=dict(pretrained='hub', tune='full'), weights=True)\n"
            "except UserError as e: print(time.time() - t); print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2, out.stdout + out.stderr
    assert float(lines[0]) < 10 and "did not answer" in lines[1] and "--pretrained PATH" in lines[1], lines
