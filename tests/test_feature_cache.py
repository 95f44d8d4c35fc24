"""``--feature-cache`` (a linear probe on features computed once), offline: a tiny open_clip config written here,
built without weights, on the bundled digits with crop and flip off.

Probing on the cached features ends the epoch with the head the uncached probe reaches on the same batches in
the same order (up to float32 rounding: the two compute each image's features in different batches); training
epochs never call the backbone; misplaced ``--feature-cache`` is one line and exit 2.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

open_clip = pytest.importorskip("open_clip")

from ltsam.cli import main  # noqa: E402
from ltsam.config import resolve  # noqa: E402
from ltsam.data.loading import load_data  # noqa: E402
from ltsam.data.sources import FeatureBatchSource  # noqa: E402
from ltsam.trainer import Trainer  # noqa: E402
from tests.pretrained_helpers import TINY_CLIP, registered_clip_configs  # noqa: E402
from tests.tolerances import rtol  # noqa: E402

NAME = "ltsam-Cache-Test"
ARCH = "clip:" + NAME.lower()
TINY = TINY_CLIP
BASE = dict(dataset="digits", device="cpu", epochs=1, batch_size=64, loss="ce", optimizer="sgd", threads=1,
            pretrained="none", arch=ARCH, tune="linear")


@pytest.fixture(scope="module", autouse=True)
def tiny_config(tmp_path_factory):
    yield from registered_clip_configs(tmp_path_factory.mktemp("open_clip"), {NAME: TINY})


def _trainer(run_dir, **settings) -> Trainer:
    cfg = resolve(BASE | settings)
    data = dataclasses.replace(load_data(cfg), pad=0, flip=False)  # no augmentation: the uncached run's inputs fixed
    return Trainer(cfg, run_dir, progress=False, data=data)


def test_cached_probe_equals_the_uncached_probe(tmp_path):
    heads = []
    for cache in (False, True):
        trainer = _trainer(tmp_path / f"run-{cache}", feature_cache=cache)
        assert isinstance(trainer.source, FeatureBatchSource) == cache
        trainer.fit()
        heads.append({n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad})
    assert set(heads[0]) == set(heads[1]) == {"net.head.weight", "net.head.bias"}
    for name, value in heads[0].items():
        scale = float(value.abs().max())
        # float32: the tower's forward (~16 stages of sums of <= 192 terms: the 3 x 8 x 8 patch embedding) rounded
        # in other batches, then the head's 9 SGD steps (~27 stages of sums of <= 64 terms)
        assert torch.allclose(heads[1][name], value, rtol=0, atol=rtol(torch.float32, 192, 43) * scale), name


def test_training_epochs_never_call_the_backbone(tmp_path):
    trainer = _trainer(tmp_path / "run", feature_cache=True, optimizer="sam")
    calls = []
    trainer.model.net.visual.register_forward_hook(lambda *args: calls.append(1))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.set_hyperparameters(0)
    trainer.train_epoch(0, trainer.criterion_for(0))
    assert calls == []
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed == {"net.head.weight", "net.head.bias"}
    x = trainer.data.test.images[:8].float() / 255.0
    with torch.no_grad():  # the model itself still takes images (evaluation, eval, hessian)
        assert trainer.model.eval()(x).shape == (8, 10) and calls == [1]


@pytest.mark.parametrize("flags, says", [
    (["--tune", "full"], "needs --tune linear"),
    (["--tune", "adapter"], "needs --tune linear"),
    (["--arch", "small_cnn"], "drop --feature-cache"),
])
def test_misplaced_feature_cache_is_one_line(tmp_path, capsys, flags, says):
    argv = ["train", "--dataset", "digits", "--epochs", "1", "--no-progress", "--threads", "1", "--arch", ARCH,
            "--pretrained", "none", "--feature-cache", *flags, "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err, err
    assert not (tmp_path / "r").exists()


def test_a_resumed_probe_caches_the_features_of_its_own_backbone(tmp_path):
    """A resumed run builds its model without the pretrained weights and takes them from last.pt: its cache must be
    computed from the restored backbone (a tower saved as a --pretrained file makes the two differ)."""
    import open_clip

    from tests.pretrained_helpers import save_weights

    torch.manual_seed(5)
    weights = save_weights(open_clip.create_model(NAME, pretrained=None).state_dict(), tmp_path / "clip.pt")
    first = _trainer(tmp_path / "run", feature_cache=True, pretrained=str(weights), epochs=2)
    first.fit(stop_after=1)
    resumed = Trainer(first.cfg, tmp_path / "run", resume=True, progress=False, data=first.data)
    assert torch.equal(resumed.source.features, first.source.features)
