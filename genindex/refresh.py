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
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import checks
from .config import IndexConfig
from .decoder import Decoder
from .loop import Plan, train_loop
from .partners import Partners
from .snapshot import Snapshot
from .train import decoder_loss
from .trie import Trie

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
    """The items a refresh sees, as rows ``0..n-1``; ``fresh_rows`` are the rows to teach."""

    x: torch.Tensor  # (n, d) float32 inputs
    codes: torch.Tensor  # (n, M) int64 identifiers
    fresh_rows: np.ndarray  # (f,) int64 rows of the fresh items
    labels: torch.Tensor | None  # (n,) int64 class indices, or None for neighbours
    trie: Trie  # every identifier in the index: what beam search chooses among


def refresh(snapshot: Snapshot, config: IndexConfig, labels: Any, ids: Any, *,
            steps: Any, replay: Any, refreshes: int, device: torch.device,
            progress: bool = False) -> tuple[Decoder, RefreshHistory]:
    """The snapshot's decoder fine-tuned on its fresh items, and what was done; the
    decoder itself (and an empty history) when there is nothing fresh.

    Arguments as :meth:`GenerativeIndex.refresh` takes them, checked here.
    """
    steps = None if steps is None else checks.as_positive_int(steps, "steps")
    replay = checks.as_nonnegative(replay, "replay")
    data = refresh_data(snapshot, labels, ids, device)
    if not len(data.fresh_rows):
        return snapshot.decoder, RefreshHistory()
    if steps is None:
        steps = default_steps(len(data.fresh_rows), replay, config.decoder.batch_size)
    return refresh_decoder(snapshot.decoder, data, config, steps=steps, replay=replay,
                           refreshes=refreshes, progress=progress)


def refresh_data(snapshot: Snapshot, labels: Any, ids: Any, device: torch.device) -> RefreshData:
    """The items a refresh learns from, checked (see :meth:`GenerativeIndex.refresh`)."""
    stored = snapshot.vectors.ids
    if labels is None:
        if ids is not None:
            raise ValueError("ids names the items that labels label: pass labels too")
        ids, y = stored, None
    else:
        ids = stored if ids is None else checks.as_ids(ids)
        y = torch.from_numpy(checks.as_labels(labels, len(ids), min_classes=1,
                                              per="id of ids")).to(device)
        present = np.isin(ids, stored)
        if not present.all():
            raise ValueError(f"ids: not in the index: {ids[~present][:10].tolist()}")
        unlabelled = np.setdiff1d(snapshot.fresh, ids)
        if len(unlabelled):
            raise ValueError("labels must cover every fresh item (see fresh_ids); "
                             f"missing ids {unlabelled[:10].tolist()}")
    order = np.argsort(ids, kind="stable")
    fresh_rows = np.sort(order[np.searchsorted(ids[order], snapshot.fresh)])
    x = torch.from_numpy(snapshot.vectors.get(ids)).to(device)
    codes = torch.from_numpy(snapshot.trie.codes_of(ids).astype(np.int64)).to(device)
    return RefreshData(x, codes, fresh_rows.astype(np.int64), y, snapshot.trie)


def default_steps(fresh: int, replay: float, batch_size: int) -> int:
    per_pass = math.ceil((fresh + round(replay * fresh)) / batch_size)
    return max(MIN_STEPS, DEFAULT_PASSES * per_pass)


def refresh_decoder(decoder: Decoder, data: RefreshData, config: IndexConfig, *, steps: int,
                    replay: float, refreshes: int, progress: bool = False
                    ) -> tuple[Decoder, RefreshHistory]:
    """A fine-tuned copy of ``decoder`` (the original is left alone) and what it did.

    Every pass shows each fresh item once and ``replay`` times as many old ones,
    drawn anew, as targets, each with an input drawn from its partners.
    ``refreshes``: how many refreshes the index had before, so each draws anew.
    """
    dc = config.decoder
    seed = config.seed + 7919 * (refreshes + 1)
    generator = torch.Generator().manual_seed(seed)
    partners = Partners(data.x, data.labels, dc.neighbors)
    fresh = torch.from_numpy(data.fresh_rows)
    old = torch.from_numpy(np.setdiff1d(np.arange(len(data.x)), data.fresh_rows))
    num_replay = min(len(old), round(replay * len(fresh)))
    per_pass = len(fresh) + num_replay
    batch_size = min(dc.batch_size, per_pass)

    def passes() -> Iterator[Iterator[torch.Tensor]]:
        while True:
            replayed = old[torch.randperm(len(old), generator=generator)[:num_replay]]
            targets = torch.cat([fresh, replayed])[torch.randperm(per_pass, generator=generator)]
            yield (torch.stack([partners.sample(generator, batch), batch.to(partners.device)],
                               dim=1) for batch in targets.split(batch_size))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = copy.deepcopy(decoder).requires_grad_(True)
        loss = train_loop(model, decoder_loss(data.x, data.codes,
                                              data.trie if dc.constrained_loss else None),
                          passes(), Plan(dc.lr * LR_SCALE, steps, 0), config,
                          "refresh decoder", progress)
    model.requires_grad_(False)
    return model, RefreshHistory(items=len(fresh), steps=steps, loss=loss)
