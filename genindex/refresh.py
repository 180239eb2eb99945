"""Fresh data: fine-tune the decoder on items added since it was trained.

Items added to a trained index get identifiers from the frozen tokenizer, but
the decoder has never been taught to write them: an item whose identifier no
training item had is found only by chance. :func:`refresh_decoder` fine-tunes
a copy of the decoder for a few hundred steps on pairs whose *targets* are
those new identifiers (as IncDSI adds documents to a DSI model), and keeps
the old ones by replaying a fresh random sample of old items in every pass.

A pair is ``(input x_a, target identifier of b)`` as in training: with labels,
``a`` is a random other item of ``b``'s class (old or new); without, one of
``b``'s nearest neighbours among all stored items.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from . import checks
from .config import IndexConfig
from .decoder import Decoder
from .state import State, codes_of, rows_of
from .train import autocast, make_optimizer, step
from .trie import Trie

_DISTANCE_BLOCK = 1 << 24  # distances per block in the neighbour search (64 MiB)
# Default length: 10 passes over the fresh items and their replay, at least 300
# steps, at the decoder's own learning rate. On emoji (--limit 50, 75 items
# added to 75) new@10 went 0.21 -> 0.88 / 0.96 / 0.95 after 100 / 300 / 600
# steps at that rate, and 0.77 / 0.94 / 0.96 at half of it.
DEFAULT_PASSES = 10
MIN_STEPS = 300
LR_SCALE = 1.0  # fine-tuning learning rate / the decoder's training rate


@dataclass
class RefreshHistory:
    """What :meth:`GenerativeIndex.refresh` did."""

    items: int = 0  # fresh items the decoder was taught
    steps: int = 0  # optimizer steps
    loss: list[float] = field(default_factory=list)  # mean loss of every pass


@dataclass(frozen=True)
class RefreshData:
    """The items a refresh sees; ``fresh`` indexes the rows to teach."""

    x: torch.Tensor  # (n, d) float32 inputs
    codes: torch.Tensor  # (n, M) int64 identifiers
    fresh: np.ndarray  # (f,) int64 rows of the fresh items
    labels: np.ndarray | None  # (n,) int64 class indices, or None for neighbours
    trie: Trie  # every identifier in the index: what beam search chooses among


def refresh_data(state: State, labels: Any, ids: Any, device: torch.device) -> RefreshData:
    """The items a refresh learns from, checked (see :meth:`refresh`)."""
    if labels is None:
        if ids is not None:
            raise ValueError("ids names the items that labels label: pass labels too")
        ids = state.vectors.ids
        y = None
    else:
        ids = state.vectors.ids if ids is None else checks.as_ids(ids)
        y = checks.as_labels(labels, len(ids), min_classes=1, per="id of ids")
        present = np.isin(ids, state.vectors.ids)
        if not present.all():
            raise ValueError(f"ids: not in the index: {ids[~present][:10].tolist()}")
        unlabelled = np.setdiff1d(state.fresh, ids)
        if len(unlabelled):
            raise ValueError("labels must cover every fresh item (see fresh_ids); "
                             f"missing ids {unlabelled[:10].tolist()}")
    order = np.argsort(ids, kind="stable")
    fresh = np.sort(order[rows_of(ids[order], state.fresh)])
    x = torch.from_numpy(state.vectors.get(ids)).to(device)
    codes = torch.from_numpy(codes_of(state.trie, ids).astype(np.int64)).to(device)
    return RefreshData(x, codes, fresh.astype(np.int64), y, state.trie)



def default_steps(fresh: int, replay: float, batch_size: int) -> int:
    per_pass = math.ceil((fresh + round(replay * fresh)) / batch_size)
    return max(MIN_STEPS, DEFAULT_PASSES * per_pass)


def refresh_decoder(decoder: Decoder, data: RefreshData, config: IndexConfig, *, steps: int,
                    replay: float, seed: int, progress: bool = False
                    ) -> tuple[Decoder, RefreshHistory]:
    """A fine-tuned copy of ``decoder`` (the original is left alone) and what it did."""
    dc = config.decoder
    generator = torch.Generator().manual_seed(seed)
    partners = _Partners(data, dc.neighbors)
    old = np.setdiff1d(np.arange(len(data.x)), data.fresh)
    num_replay = min(len(old), round(replay * len(data.fresh)))
    per_pass = len(data.fresh) + num_replay
    batch_size = min(dc.batch_size, per_pass)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = copy.deepcopy(decoder).requires_grad_(True)
        allowed = data.trie.allowed if dc.constrained_loss else lambda targets: None
        optimizer, schedule = make_optimizer(model, dc.lr * LR_SCALE, config, steps * batch_size,
                                             batch_size, 1, 0)
        history = RefreshHistory(items=len(data.fresh), steps=steps)
        bar = tqdm(total=steps, desc="refresh decoder", unit="step", disable=not progress,
                   leave=False)
        fresh = torch.from_numpy(data.fresh)
        done = 0
        while done < steps:
            replayed = torch.from_numpy(old)[torch.randperm(len(old), generator=generator)
                                             [:num_replay]]
            targets = torch.cat([fresh, replayed])[torch.randperm(per_pass, generator=generator)]
            losses = []
            for batch in targets.split(batch_size)[:steps - done]:
                model.train()
                inputs = partners.sample(batch, generator)
                target = data.codes[batch.to(data.codes.device)]
                with autocast(data.x.device):
                    _, loss = model(data.x[inputs.to(data.x.device)], target[:, :-1], target,
                                    allowed(target))
                losses.append(step(loss, optimizer, schedule))
            done += len(losses)
            bar.update(len(losses))
            history.loss.append(sum(losses) / len(losses))
        bar.close()
    model.eval().requires_grad_(False)
    return model, history


class _Partners:
    """For each target row, the row whose input should produce its identifier."""

    def __init__(self, data: RefreshData, neighbors: int) -> None:
        n = len(data.x)
        self.x, self.k = data.x, min(neighbors, max(n - 1, 1))
        self.labelled = data.labels is not None
        if self.labelled:
            labels = torch.from_numpy(data.labels)
            self.order = torch.argsort(labels, stable=True)
            counts = torch.bincount(labels)
            self.start = (counts.cumsum(0) - counts)[labels]
            self.count = counts[labels]
            rank = torch.empty_like(self.order)
            rank[self.order] = torch.arange(n)
            self.position = rank - self.start  # place of each row inside its class

    def sample(self, targets: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if not self.labelled:  # neighbours of just these rows: linear in the items
            knn = _nearest_neighbors(self.x, targets.to(self.x.device), self.k).cpu()
            pick = torch.randint(knn.shape[1], (len(targets),), generator=generator)
            return knn[torch.arange(len(targets)), pick]
        count = self.count[targets]
        r = (torch.rand(len(targets), generator=generator) * (count - 1).clamp(min=1)).long()
        r = r + ((r >= self.position[targets]) & (count > 1)).long()  # never the item itself
        return self.order[self.start[targets] + r]


def _nearest_neighbors(x: torch.Tensor, rows: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (len(rows), k) of the k nearest other rows of ``x`` to each of ``rows``."""
    if len(x) == 1:
        return torch.zeros(len(rows), 1, dtype=torch.long, device=x.device)
    norms = (x * x).sum(1)
    block_rows = max(1, _DISTANCE_BLOCK // len(x))
    out = []
    for start in range(0, len(rows), block_rows):
        chunk = rows[start:start + block_rows]
        block = x[chunk]
        d = (block * block).sum(1, keepdim=True) - 2 * block @ x.T + norms
        d[torch.arange(len(chunk)), chunk] = float("inf")
        out.append(d.topk(k, dim=1, largest=False).indices)
    return torch.cat(out)
