"""The one training loop: optimiser, schedule, data parallelism, progress and history.

The tokenizer (eq. 3-4), the decoder (eq. 5) and a refresh of the decoder all
train through :func:`train_loop`. What differs between them is passed in: the
loss of a batch and the passes over the data (a pass is an iterable of
batches; the tokenizer refits its codebooks before each, the decoder draws new
partners). Everything else is done here, once:

* AdamW with betas (0.9, 0.96) and weight decay 0.05 on matrices only, a
  linear warm-up then cosine decay per step (paper appendix A), a backbone
  inside the model at ``backbone_lr_scale`` times the learning rate;
* DistributedDataParallel under ``torchrun`` (see :mod:`genindex.distributed`):
  every rank takes its slice of each global batch, losses weighted so that
  the optimizer takes the steps one process would;
* bfloat16 autocast where the hardware computes it natively (``precision``:
  CUDA, and CPUs with AVX512-BF16 or AMX), a progress bar on rank 0, the mean
  loss of every pass (averaged over ranks) as the history;
* the stopping rule (:class:`Stopping`): a score on held-out data after every
  pass, training ended once it has not improved for ``patience`` passes, and
  the weights of the best pass kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .backbones import Backbone
from .config import PRECISIONS

# The loss of a batch: (the model, wrapped for DDP when active; batch rows) -> scalar
BatchLoss = Callable[[nn.Module, torch.Tensor], torch.Tensor]


class Objective(nn.Module):
    """A training loss as ``forward`` (what DDP wraps): ``loss(module, *inputs)``."""

    def __init__(self, module: nn.Module, loss: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.module, self.loss = module, loss

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.loss(self.module, *inputs)


@dataclass(frozen=True)
class Plan:
    """How long to train and at what rate."""

    lr: float  # peak learning rate of the heads
    steps: int  # optimizer steps in all; training stops there
    warmup: int  # the first steps, over which the rate rises linearly


@dataclass
class Stopping:
    """Stop once ``score()`` (higher is better; computed after every pass, on data the
    passes do not train on) has not improved for ``patience`` passes, and keep the
    weights of the best pass. ``scores`` records every pass's score."""

    score: Callable[[], float]
    patience: int
    scores: list[float] = field(default_factory=list)
    best_pass: int | None = None

    def update(self, model: nn.Module) -> bool:
        """Score the model after a pass, remember it if best; whether to stop now."""
        self.scores.append(float(self.score()))
        if self.best_pass is None or self.scores[-1] > self.scores[self.best_pass]:
            self.best_pass = len(self.scores) - 1
            self._best = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return len(self.scores) - 1 - self.best_pass >= self.patience

    def restore(self, model: nn.Module) -> None:
        if self.best_pass is not None:
            model.load_state_dict(self._best)
            del self._best


class OptimizerSettings(Protocol):
    weight_decay: float
    betas: tuple[float, float]
    backbone_lr_scale: float
    precision: str  # one of PRECISIONS


def epoch_plan(lr: float, epochs: int, warmup_epochs: int, n: int, batch_size: int) -> Plan:
    """A plan of ``epochs`` passes over ``n`` items in batches of ``batch_size``."""
    per_epoch = math.ceil(n / batch_size)
    return Plan(lr, epochs * per_epoch, warmup_epochs * per_epoch)


def num_epochs(epochs: int, min_steps: int, n: int, batch_size: int) -> int:
    """``epochs``, or more where that is fewer than ``min_steps`` optimizer steps."""
    return max(epochs, math.ceil(min_steps / math.ceil(n / batch_size)))


def train_loop(model: nn.Module, batch_loss: BatchLoss, passes: Iterable[Iterable[torch.Tensor]],
               plan: Plan, settings: OptimizerSettings, desc: str,
               progress: bool = True, stopping: Stopping | None = None) -> list[float]:
    """Train ``model`` on ``passes`` until they end, ``plan.steps`` steps or the
    ``stopping`` rule (then with the best pass's weights); mean loss per pass.

    A batch is a tensor of training rows, cut along its first axis into one
    slice per rank; ``batch_loss`` gets the model (in DDP when a process group
    is active) and this rank's slice.
    """
    device = next(model.parameters()).device
    wrapped = distributed.wrap(model)
    optimizer, schedule = make_optimizer(model, plan, settings)
    history: list[float] = []
    bar = tqdm(total=plan.steps, desc=desc, unit="step", leave=False,
               disable=not (progress and distributed.is_main()))
    done = 0
    for batches in passes:
        model.train()
        losses = []
        for batch in islice(batches, plan.steps - done):
            rows, weight = distributed.shard(batch)  # all of it on one process
            with autocast(device, settings.precision):
                loss = batch_loss(wrapped, rows)
            losses.append(step(loss if weight == 1.0 else loss * weight, optimizer, schedule))
        done += len(losses)
        bar.update(len(losses))
        history.append(distributed.mean(float(torch.stack(losses).float().mean()), device))
        halt = stopping is not None and stopping.update(model)
        bar.set_postfix(loss=f"{history[-1]:.4f}", **(
            {"score": f"{stopping.scores[-1]:.4f}"} if stopping is not None else {}))
        if done >= plan.steps or halt:
            break
    bar.close()
    if stopping is not None:
        stopping.restore(model)
    model.eval()
    return history


def make_optimizer(model: nn.Module, plan: Plan, settings: OptimizerSettings):
    """AdamW (decay on matrices only, as nanoGPT) with warm-up + cosine decay per step.

    A backbone inside ``model`` (end-to-end mode) learns at
    ``settings.backbone_lr_scale`` times the rate (paper appendix A: 1/100).
    """
    in_backbone = {id(p) for m in model.modules() if isinstance(m, Backbone)
                   for p in m.parameters()}
    groups = []
    for scale in (1.0, settings.backbone_lr_scale):
        params = [p for p in model.parameters() if p.requires_grad
                  and (id(p) in in_backbone) == (scale != 1.0)]
        groups += [{"params": [p for p in params if p.dim() >= 2], "lr": plan.lr * scale,
                    "weight_decay": settings.weight_decay},
                   {"params": [p for p in params if p.dim() < 2], "lr": plan.lr * scale,
                    "weight_decay": 0.0}]
    # fused: one kernel for all parameters, several times faster than the loop (on 2
    # CPU cores 0.02 s instead of 0.15 s a step for a 23M-parameter decoder)
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=plan.lr,
                                  betas=settings.betas,
                                  fused=device.type in ("cpu", "cuda"))

    def factor(step: int) -> float:
        if step < plan.warmup:
            return (step + 1) / plan.warmup
        progress = (step - plan.warmup) / max(plan.steps - plan.warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def autocast(device: torch.device, precision: str = "auto"):
    """Mixed precision as ``precision`` asks (:func:`training_dtype`), else nothing."""
    dtype = training_dtype(device, precision)
    return torch.autocast(device_type=device.type, dtype=dtype or torch.bfloat16,
                          enabled=dtype is not None)


def training_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype of training on ``device``: ``"float32"``, none; ``"bfloat16"``,
    bfloat16; ``"auto"``, bfloat16 where the hardware has it (CUDA; a CPU with
    AVX512-BF16 or AMX), else none."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "float32" or (precision == "auto" and not native_bfloat16(device)):
        return None
    return torch.bfloat16


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 matrix products in hardware."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private in torch 2.x
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def step(loss: torch.Tensor, optimizer, schedule) -> torch.Tensor:
    """One optimizer step; the loss, detached, left on its device (no host sync)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    schedule.step()
    return loss.detach()


def batches(n: int, batch_size: int, generator: torch.Generator,
            device: torch.device) -> Iterator[torch.Tensor]:
    """The rows ``0..n-1`` in a random order, in batches."""
    order = torch.randperm(n, generator=generator).to(device)
    yield from order.split(batch_size)
