"""A pack: G runs of one architecture trained as one fused model in one process, each into its own
ordinary run folder (config.json, metrics.jsonl, last/best checkpoints, final.json) that ``eval``,
``finetune``, ``hessian``, ``report`` and ``train --resume`` read as any run's.

Each member is built exactly as its run alone would be (its seed before its model, its own data, batch source,
train rule, loss and radius), so it draws the same batches and augmentation; the pack stacks the members'
weights (``ltsam.pack.model``), sums their losses (members never exchange gradients or statistics) and takes
one optimizer step for all (``ltsam.pack.optim``). The epoch loop, records and checkpoints are the run
engine's (``ltsam.run.loop``): a member that diverges stops alone, with its last finite checkpoint kept.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ltsam.data.catalog import DATASETS
from ltsam.epoch_settings import epoch_criterion, epoch_lr, epoch_rho, evaluated
from ltsam.errors import TrainingDiverged, UserError
from ltsam.evaluate import EvalCounts
from ltsam.faults import fault_point
from ltsam.io import read_json, write_json
from ltsam.methods import METHODS
from ltsam.metrics import index_groups
from ltsam.objectives import for_loss
from ltsam.optim import StepLosses
from ltsam.optim.steps import mark_accumulated
from ltsam.pack.compat import check_batches, check_pack
from ltsam.pack.model import PackedModel
from ltsam.pack.optim import member_optimizer_state, packed_step, stacked_optimizer_state
from ltsam.pack.threads import thread_plan
from ltsam.rules import build_rule
from ltsam.run.checkpoints import load_last, training_checkpoint
from ltsam.run.files import DIVERGED_NAME
from ltsam.run.health import check_finite
from ltsam.run.loop import EpochResult, Member, run_epochs, write_final
from ltsam.run.records import EpochTally, Progress, training_summary
from ltsam.run.runtime import precision, run_threads, seed_everything, start_runtime
from ltsam.runs import model_from_meta

if TYPE_CHECKING:
    from ltsam.config import TrainConfig
    from ltsam.data.lt_data import LTData


@dataclass(eq=False)
class PackMember:
    """One run of a pack: its configuration, folder, data and batch source, and its state while it is out
    of the fused model (before the pack is built, or while it waits)."""

    cfg: TrainConfig
    run_dir: Path
    data: LTData
    source: Any
    meta: dict[str, Any]
    state: Progress
    _: KW_ONLY
    model_state: dict[str, torch.Tensor] | None = None  # its weights while not in the pack
    optimizer_state: dict[str, Any] | None = None  # its optimizer's, likewise (None before its first step)
    run: Member | None = None
    diverged: str | None = None  # why it stopped
    extra: dict[str, Any] = field(default_factory=dict)


class PackTrainer:
    """Trains ``cfgs`` (each into its ``run_dirs`` entry) as one pack; ``resume=True`` continues every member
    from its own ``last.pt`` (a list of flags: the members marked true; the others start afresh). ``mode``:
    how the fused model runs (one of ``ltsam.pack.model.MODES``, or ``auto``: vmap on CUDA; on a CPU, where
    grouped convolutions are slower than separate ones, the members side by side on threads, or in turn when
    the process has one intra-op thread). ``worker_threads``: threads mode's workers (default: one per member,
    up to the intra-op thread count)."""

    def __init__(self, cfgs: Sequence[TrainConfig], run_dirs: Sequence[Path],
                 resume: bool | Sequence[bool] = False, progress: bool = True, *,
                 datas: Sequence[LTData] | None = None, mode: str = "auto", worker_threads: int | None = None):
        check_pack(cfgs)
        first = cfgs[0]
        self.ctx, self.device = start_runtime(first.device, first, first.seed)
        if self.ctx.world > 1:
            raise UserError("packs train in one process; run them without torchrun (one pack per GPU)")
        self.progress = progress
        self.autocast, _ = precision(first.amp, self.device, scaled=False)
        self.worker_threads, self.threads_each = worker_threads, run_threads(first)  # each member's, as alone
        workers, _ = thread_plan(len(cfgs), self.threads_each, worker_threads)
        self.mode = mode if mode != "auto" else default_mode(self.device, workers)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        each = [resume] * len(cfgs) if isinstance(resume, bool) else list(resume)
        self.members = [self._member(cfg, Path(d), each[i], None if datas is None else datas[i])
                        for i, (cfg, d) in enumerate(zip(cfgs, run_dirs, strict=True))]
        check_batches([len(m.source) for m in self.members], "numbers of training batches per epoch")
        check_batches([int(getattr(m.data, "val_size", 0)) for m in self.members], "validation set sizes")
        self.groups = (index_groups(self.members[0].data.num_classes,
                                    DATASETS.entry(first.dataset).meta["index_split"])
                       if first.shot_split == "index" else None)
        self.current: list[PackMember] = []
        self.net: PackedModel | None = None
        self.step: Any = None
        self.rhos: list[float] = []  # this epoch's radius of each member in the pack

    def _member(self, cfg: TrainConfig, run_dir: Path, resume: bool, data: LTData | None) -> PackMember:
        """Member built as ``Trainer`` builds its run: data, then the seeds, model and batch source."""
        from ltsam.data.loading import load_data

        data = data if data is not None else load_data(cfg)
        seed_everything(cfg.seed)
        meta = METHODS.get(cfg.method).model_meta(cfg, data)
        model = model_from_meta(meta)
        weights = build_rule(cfg.train_rule, cfg).sample_weights(data.cls_num_list)
        source = data.train_source(cfg.batch_size, cfg.seed, self.device, weights,
                                   channels_last=cfg.channels_last, workers=cfg.workers)
        m = PackMember(cfg, run_dir, data, source, meta, Progress(), model_state=model.state_dict())
        if resume:
            ckpt = load_last(run_dir)
            if ckpt.get("model_meta") != meta:
                raise UserError(f"cannot resume {run_dir}: its checkpoint is a {ckpt.get('model_meta')} model, this "
                                f"pack builds {meta}; resume it with its own configuration")
            m.model_state, m.optimizer_state = ckpt["model"], ckpt["optimizer"]
            m.state = Progress.from_checkpoint(ckpt)
            if (run_dir / DIVERGED_NAME).is_file():  # it stopped in an earlier run of the pack: not trained again
                m.diverged = str(read_json(run_dir / DIVERGED_NAME).get("message", "diverged"))
        return m

    # ------------------------------------------------------------------ the fused model
    def _pack(self, members: list[PackMember]) -> None:
        """Build the fused model and its optimizer from ``members``' own states (at the start, and when a
        member stops or one behind catches up)."""
        for m in self.current:  # take the states back out of the old pack first
            m.model_state, m.optimizer_state = self._member_model_state(m), self._member_optimizer_state(m)
        models = []
        for m in members:
            model = model_from_meta(m.meta)
            model.load_state_dict(m.model_state or {})
            models.append(model.to(self.device))
        first = members[0].cfg
        # stacked (5-D) weights: --channels-last shapes the inputs only
        net = PackedModel(models, mode=self.mode, workers=self.worker_threads, threads_each=self.threads_each)
        step = packed_step(first, net.stacked_parameters(), len(members), self.autocast)
        states = [m.optimizer_state for m in members]
        if all(s is not None for s in states):
            step.optimizer.load_state_dict(stacked_optimizer_state([s for s in states if s is not None]))
        self.net, self.step, self.current = net, step, list(members)
        for m in members:
            m.model_state = m.optimizer_state = None

    def _slot(self, m: PackMember) -> int:
        return self.current.index(m)

    def _member_model_state(self, m: PackMember) -> dict[str, torch.Tensor]:
        if m not in self.current:
            assert m.model_state is not None
            return m.model_state
        assert self.net is not None
        return self.net.member_state(self._slot(m))

    def _member_optimizer_state(self, m: PackMember) -> dict[str, Any]:
        if m not in self.current:
            return m.optimizer_state or {}
        g = self._slot(m)
        return member_optimizer_state(self.step.optimizer.state_dict(), g, len(self.current), self.rhos[g])

    # ------------------------------------------------------------------ one epoch of the members whose turn it is
    def run_epoch(self, epoch: int, runs: Sequence[Member]) -> list[EpochResult | None]:
        members = [next(m for m in self.members if m.run is r) for r in runs]
        if members != self.current:
            self._pack(members)
        assert self.net is not None
        first = members[0].cfg
        lr = epoch_lr(first, epoch)
        rhos = self.rhos = [epoch_rho(m.cfg, epoch) if m.cfg.uses_sam else 0.0 for m in members]
        for group in self.step.optimizer.param_groups:
            group["lr"] = lr
            if "rho" in group:
                # in the parameters' dtype: rho_g / ||g_g|| rounds as in member g's run alone
                group["rho"] = torch.tensor(rhos, device=self.device, dtype=group["params"][0].dtype)
        criteria = [epoch_criterion(m.cfg, m.data, epoch, self.device) for m in members]
        stats, firsts, steps = self._train(epoch, members, criteria)
        measured = evaluated(first, epoch)  # --eval-every is one of the settings a pack's members share
        tests = self._evaluate(members, criteria, "test") if measured else [None] * len(members)
        vals = (self._evaluate(members, criteria, "val") if measured and bool(getattr(members[0].data, "val_size", 0))
                else None)
        results: list[EpochResult | None] = []
        for g, m in enumerate(members):
            try:
                check_finite(self.net.member_state(g).values(), epoch, bad_steps=stats[g].bad_steps,
                             first_bad=firsts[g], steps=steps, loss_scaled=False, world=1, run_dir=m.run_dir,
                             lr=first.lr, rho=rhos[g])
            except TrainingDiverged as exc:
                m.diverged = str(exc)
                write_json(m.run_dir / DIVERGED_NAME, {"epoch": epoch, "message": str(exc)})
                print(f"ltsam: pack member {m.run_dir.name} stopped: {exc}", flush=True)
                results.append(None)
                continue
            head = {"lr": lr, "rho": rhos[g], **stats[g].stats()}
            results.append((head, tests[g], None if vals is None else vals[g]))
        if self.ctx.is_main:
            print(f"pack epoch {epoch + 1:>3}/{first.epochs}  lr {lr:.4g}  test top-1 " + "  ".join(
                f"{m.run_dir.name} {'-' if r is None or r[1] is None else format(r[1]['top1'], '.2f')}"
                for m, r in zip(members, results)), flush=True)
        return results

    def _train(self, epoch: int, members: list[PackMember], criteria: list[nn.Module]
               ) -> tuple[list[EpochTally], list[int], int]:
        from tqdm.auto import tqdm

        assert self.net is not None
        self.net.train()
        for m in members:
            m.source.set_epoch(epoch)
        tallies = [EpochTally(self.device) for _ in members]
        first_bad = torch.full((len(members),), -1, device=self.device, dtype=torch.long)
        step = torch.zeros((), device=self.device, dtype=torch.long)
        bar = tqdm(zip(*(m.source for m in members)), total=len(members[0].source), leave=False, unit="batch",
                   desc=f"pack of {len(members)}: epoch {epoch + 1}/{members[0].cfg.epochs}", disable=not self.progress)
        for batches in bar:
            x = torch.stack([b[0] for b in batches])
            y = torch.stack([b[1] for b in batches])
            out = self.step(self.net, packed_objective(x, y, criteria, self.autocast)).last
            fault_point("step")
            bad = torch.stack([tally.add(out.report[g].detach(), out.logits[g].detach(), y[g])
                               for g, tally in enumerate(tallies)])
            first_bad = torch.where(bad & (first_bad < 0), step, first_bad)
            step += 1
        for tally in tallies:
            tally.reduce(self.ctx)
        return tallies, [int(v) for v in first_bad.cpu()], int(step)

    @torch.no_grad()
    def _evaluate(self, members: list[PackMember], criteria: list[nn.Module], split: str) -> list[dict[str, Any]]:
        """Each member's results on the test images (one batch stream, every member reading it) or on its own
        validation images (stacked like training batches)."""
        assert self.net is not None
        self.net.eval()
        cfg = members[0].cfg
        counts = [EvalCounts(m.data.cls_num_list, groups=self.groups, with_loss=True) for m in members]
        if split == "test":
            streams: Any = ((x, y, True) for x, y in members[0].data.test_batches(
                cfg.eval_batch_size, self.device, cfg.channels_last, cfg.workers))
        else:
            streams = ((torch.stack([b[0] for b in bs]), torch.stack([b[1] for b in bs]), False) for bs in zip(
                *(m.data.val_batches(cfg.eval_batch_size, self.device, cfg.channels_last, cfg.workers)
                  for m in members)))
        for x, y, shared in streams:
            with self.autocast():
                logits = self.net(x, shared_input=shared).float()
            for g, c in enumerate(counts):
                c.add(logits[g], y if shared else y[g], criteria[g])
        return [c.results()[0][0] for c in counts]

    # ------------------------------------------------------------------ the runs
    def fit(self, stop_after: int | None = None) -> list[dict[str, Any] | None]:
        """Train every member to its last epoch (or ``stop_after`` epochs); each member's summary, ``None`` for
        one that diverged. Exits through the engine's loop; each member's final.json is written at the end."""
        for m in self.members:
            m.run = Member(m.run_dir, m.cfg.epochs, m.state, functools.partial(self.payload, m), echo=False,
                           stopped=m.diverged is not None)
        try:
            run_epochs([m.run for m in self.members if m.run is not None], self, self.ctx, stop_after)
        except torch.cuda.OutOfMemoryError:
            raise UserError(f"out of GPU memory with {len(self.current)} runs in one pack; pack fewer (--pack N "
                            f"with a smaller N, or fewer --seeds at once) — every member's last.pt is kept, and the "
                            f"same command with --resume continues") from None
        return [None if m.diverged else self.finish(m) for m in self.members]

    def payload(self, m: PackMember, epochs_done: int) -> dict[str, Any]:
        """Member ``m``'s checkpoint after ``epochs_done`` epochs: what its run alone would write."""
        return training_checkpoint(epochs_done, model=self._member_model_state(m),
                                   optimizer=self._member_optimizer_state(m), meta=m.meta, config=m.cfg.to_dict(),
                                   data=m.data, progress=m.state.checkpoint_fields(), scaler=None, step={})

    def finish(self, m: PackMember) -> dict[str, Any]:
        """Member ``m``'s final evaluation, final.json and figures."""
        from ltsam.evaluate import evaluate

        model = model_from_meta(m.meta).to(self.device)
        model.load_state_dict(self._member_model_state(m))
        test, conf = evaluate(model, m.data.test_batches(m.cfg.eval_batch_size, self.device, m.cfg.channels_last,
                                                         m.cfg.workers), m.data.cls_num_list, None, self.ctx,
                              groups=self.groups, autocast=self.autocast)
        summary = training_summary(m.run_dir, m.cfg.epochs, m.state, test, data=m.data, device=self.device,
                                   ctx=self.ctx)
        return write_final(m.run_dir, self.ctx, summary, test, conf, m.data)


def default_mode(device: torch.device, workers: int) -> str:
    """``auto``'s mode: ``vmap`` on CUDA; on a CPU ``threads`` when its plan has 2+ workers
    (``ltsam.pack.threads.thread_plan``), else ``loop``."""
    if device.type == "cuda":
        return "vmap"
    return "threads" if workers > 1 else "loop"


def packed_objective(x: torch.Tensor, y: torch.Tensor, criteria: Sequence[nn.Module], autocast: Any):
    """The pack's objective on stacked batches (G, B, ...): the sum of each member's loss on its own logits;
    ``report`` holds the G losses, ``logits`` (G, B, classes). In threads mode each member's backward pass runs
    on its worker thread here (``PackedModel.forward_backward``), and the loss is marked as back-propagated
    (``mark_accumulated``): the step takes no backward pass of its own."""
    def objective(model: nn.Module) -> StepLosses:
        if isinstance(model, PackedModel) and model.threads is not None:
            losses, logits = model.forward_backward(x, lambda g, out: criteria[g](for_loss(out), y[g]), autocast)
            total = mark_accumulated(losses.sum())
            return StepLosses(total, total, losses, logits, y)
        with autocast():
            logits = model(x)
            full = for_loss(logits)
            losses = torch.stack([c(full[g], y[g]) for g, c in enumerate(criteria)])
        total = losses.sum()
        return StepLosses(total, total, losses, logits, y)

    return objective

