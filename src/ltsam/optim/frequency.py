"""When a SAM-style step takes its ascent: every k-th step, by a Bernoulli draw, or by AE-SAM's trigger.

SAM costs two forward/backward passes per step. These options take the ascent on some steps only and a
plain step of the base optimizer (one pass, the method's descent loss at w) on the others:

- every k (``--sam-every k``, periodic as in LookSAM): SAM on steps k, 2k, 3k, ... (counted from 1);
- Bernoulli (``--sam-prob p``, randomized as SS-SAM / randomized sharpness training): SAM with probability p,
  one draw per step from the step's own generator (seeded by ``--seed``, saved in checkpoints);
- adaptive (``--sam-adaptive-trigger``, AE-SAM, Jiang et al., ICLR 2023): with s_t = ||g_t||^2 of the
  stochastic gradient of the descent loss at w_t, running statistics (mu and sigma^2 start at 0)

      mu_t      = delta mu_{t-1} + (1 - delta) s_t
      sigma^2_t = delta sigma^2_{t-1} + (1 - delta) (s_t - mu_t)^2
      c_t       = (t / T) lambda_1 + (1 - t / T) lambda_2          (t = 0 .. T-1, T = all steps of the run)

  and SAM when s_t >= mu_t + c_t sigma_t. c_t falls from lambda_2 to lambda_1, so SAM fires more often late
  in training; the defaults lambda_1 = -1, lambda_2 = 1 give about half of the steps under a normal s_t.

The rules combine: a step is a SAM step when every chosen rule says so. Every-k and Bernoulli decide before
the forward pass; the trigger needs the gradient at w, which the SAM step then reuses where it can.
The rho schedules still set the radius of the SAM steps.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ltsam.errors import UserError
from ltsam.registry import Option, Settings

SAM, PLAIN, DECIDE = "sam", "plain", "decide"

OPTIONS = (
    Option("sam_every", int, 1, "take SAM's ascent on every k-th step only, a plain step otherwise (default 1)",
           minimum=1),
    Option("sam_prob", float, 1.0, "take SAM's ascent with probability p per step (default 1)", minimum=0.0),
    Option("sam_adaptive_trigger", bool, False, "AE-SAM: take the ascent when ||g||^2 >= mu + c_t sigma of its "
           "running statistics (default off)"),
    Option("ae_sam_delta", float, 0.9, "AE-SAM: decay of the running mean/variance of ||g||^2 (default 0.9)",
           minimum=0.0, below=1.0),
    Option("ae_sam_lambda1", float, -1.0, "AE-SAM: c_t at the end of the run (default -1)"),
    Option("ae_sam_lambda2", float, 1.0, "AE-SAM: c_t at the start of the run (default 1)"),
)
NAMES = tuple(o.name for o in OPTIONS)


def check_options(cfg: Settings) -> None:
    """The registration hook (``resolve``) of SAM-style steps: refuse a probability above 1 while the
    configuration is resolved, before a run folder is touched."""
    if float(getattr(cfg, "sam_prob", 1.0)) > 1.0:
        raise UserError(f"--sam-prob is a probability, at most 1; got {cfg.sam_prob}")


def _generator(seed: int) -> torch.Generator:
    """The Bernoulli stream: its own CPU generator, apart from the data and model streams of ``--seed``."""
    return torch.Generator().manual_seed((int(seed) * 2_654_435_761 + 0x5A3) % (2**63))


class SAMFrequency:
    """The policy of one step: ``plan()`` once per step gives ``SAM``, ``PLAIN`` or ``DECIDE`` (the trigger
    decides with ``decide(s_t)`` from the gradient at w). Its counters, running statistics and generator
    are saved with the step (``state_dict``), so a resumed run takes the same decisions."""

    def __init__(self, sam_every: int = 1, sam_prob: float = 1.0, sam_adaptive_trigger: bool = False, *,
                 ae_sam_delta: float = 0.9, ae_sam_lambda1: float = -1.0, ae_sam_lambda2: float = 1.0,
                 seed: int = 0):
        if sam_every < 1 or not 0.0 <= sam_prob <= 1.0 or not 0.0 <= ae_sam_delta < 1.0:
            raise UserError(f"--sam-every must be at least 1, --sam-prob in [0, 1] and --ae-sam-delta in [0, 1); "
                            f"got {sam_every}, {sam_prob}, {ae_sam_delta}")
        self.every, self.prob, self.trigger = int(sam_every), float(sam_prob), bool(sam_adaptive_trigger)
        self.delta, self.lambda1, self.lambda2 = float(ae_sam_delta), float(ae_sam_lambda1), float(ae_sam_lambda2)
        self.generator = _generator(seed) if self.prob < 1.0 else None
        self.calls = 0          # steps planned so far (every-k counts them)
        self.sam_steps = 0      # steps that took the ascent
        self.mu = self.var = 0.0
        self.first_step, self.total_steps, self.in_epoch = 0, 0, 0

    @classmethod
    def pop_from(cls, options: dict[str, Any], seed: int = 0) -> SAMFrequency:
        """The policy from a step's options; its keys are removed from ``options``."""
        return cls(**{k: options.pop(k) for k in NAMES if k in options}, seed=seed)

    @property
    def always(self) -> bool:
        return self.every == 1 and self.prob >= 1.0 and not self.trigger

    def set_progress(self, epoch: int, epochs: int, steps_per_epoch: int) -> None:
        """Called at each epoch start: t of the epoch's first step and T, for AE-SAM's c_t."""
        self.first_step, self.total_steps, self.in_epoch = epoch * steps_per_epoch, epochs * steps_per_epoch, 0

    def plan(self) -> str:
        self.calls += 1
        self.in_epoch += 1
        take = self.calls % self.every == 0
        if self.generator is not None:  # one draw per step whatever the other rules say
            take = bool(torch.rand((), generator=self.generator) < self.prob) and take
        if not take:
            return PLAIN
        if self.trigger:
            return DECIDE
        self.sam_steps += 1
        return SAM

    def threshold_c(self) -> float:
        """c_t = (t/T) lambda_1 + (1 - t/T) lambda_2 for the current step (T unknown: t/T = 0)."""
        frac = (self.first_step + self.in_epoch - 1) / self.total_steps if self.total_steps else 0.0
        return frac * self.lambda1 + (1.0 - frac) * self.lambda2

    def decide(self, sq_norm: float) -> bool:
        """AE-SAM: update mu, sigma^2 with s_t = ``sq_norm`` and say whether to take the ascent. A
        non-finite s_t (an fp16 overflow, which the scaler skips) leaves the statistics alone: no SAM."""
        if not math.isfinite(sq_norm):
            return False
        d = self.delta
        self.mu = d * self.mu + (1.0 - d) * sq_norm
        self.var = d * self.var + (1.0 - d) * (sq_norm - self.mu) ** 2
        take = sq_norm >= self.mu + self.threshold_c() * math.sqrt(self.var)
        self.sam_steps += int(take)
        return take

    def state_dict(self) -> dict[str, Any]:
        if self.always:
            return {}
        state: dict[str, Any] = {"calls": self.calls, "sam_steps": self.sam_steps, "mu": self.mu, "var": self.var}
        if self.generator is not None:
            state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.calls, self.sam_steps = int(state["calls"]), int(state["sam_steps"])
        self.mu, self.var = float(state["mu"]), float(state["var"])
        if self.generator is not None and "generator" in state:
            self.generator.set_state(state["generator"])


def grad_sq_norm(params: list[torch.Tensor], scale: float = 1.0) -> float:
    """||g||^2 over the parameters' gradients (one fused reduction), divided by ``scale``^2 (fp16 loss
    scaling). A host sync: the trigger's decision needs the number."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norms = torch._foreach_norm(grads)
    device = norms[0].device
    total = torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms])) ** 2
    return float(total) / (scale * scale)
