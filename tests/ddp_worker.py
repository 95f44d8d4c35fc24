"""Run by tests/test_distributed.py under torchrun: a few SAM steps of a batch-norm-free model, in float64
(the comparison with a single process is about the algebra; see the test)."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ltsam.data.sources import InMemoryBatchSource
from ltsam.objectives import supervised_objective
from ltsam.optim import StepSettings, build_step


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, 3)).double()


def tiny_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (96, 3, 8, 8), dtype=torch.uint8, generator=g), torch.arange(96) % 3


def train(batch_size: int, rank: int, world: int, steps: int = 3) -> nn.Module:
    model = tiny_model()
    net = DDP(model) if world > 1 else model
    images, targets = tiny_data()
    source = InMemoryBatchSource(images, targets, batch_size, torch.zeros(3), torch.ones(3), pad=0, flip=False,
                                 seed=0, rank=rank, world=world)
    step = build_step("sam", model.parameters(), StepSettings(lr=0.1, momentum=0.9, wd=5e-4, rho=0.5))
    criterion = nn.CrossEntropyLoss()
    for i, (x, y) in enumerate(source):
        if i == steps:
            break
        step(net, supervised_objective(x.double(), y, criterion))
    return model


if __name__ == "__main__":
    dist.init_process_group("gloo")
    trained = train(16, dist.get_rank(), dist.get_world_size())
    if dist.get_rank() == 0:
        torch.save(trained.state_dict(), sys.argv[1])
    dist.destroy_process_group()
