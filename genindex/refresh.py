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

With class identifiers, ``add`` gives an item of a class the tokenizer never
saw the identifier of whichever known class it resembles most, so it joins
that class's leaf. A labelled refresh knows better: a label whose items are
all fresh names a new class, and :func:`new_class_codes` gives its items a
leaf of their own (the code of their mean f_cls, as training codes a class
centre) before the decoder is taught it.
"""

from __future__ import annotations

import copy
import dataclasses
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
from .tokenizer import SemanticTokenizer
from .train import Teacher, decoder_loss, decoder_partners, f_cls_teacher
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
    ids: np.ndarray  # (n,) int64 the item id of every row


def refresh(snapshot: Snapshot, config: IndexConfig, labels: Any, ids: Any, *,
            steps: Any, replay: Any, refreshes: int, device: torch.device,
            progress: bool = False) -> tuple[Snapshot, RefreshHistory]:
    """The snapshot with its decoder fine-tuned on its fresh items (and, with class
    identifiers, new classes in leaves of their own), and what was done; the snapshot
    itself (and an empty history) when there is nothing fresh.

    Arguments as :meth:`GenerativeIndex.refresh` takes them, checked here.
    """
    steps = None if steps is None else checks.as_positive_int(steps, "steps")
    replay = checks.as_nonnegative(replay, "replay")
    data = refresh_data(snapshot, labels, ids, device)
    if not len(data.fresh_rows):
        return snapshot, RefreshHistory()
    if snapshot.tokenizer.class_codes is not None and data.labels is not None:
        data = new_class_codes(snapshot.tokenizer, data)
    if steps is None:
        steps = default_steps(len(data.fresh_rows), replay, config.decoder.batch_size)
    partners = decoder_partners(data.x, data.x, data.labels, snapshot.tokenizer, config)
    teacher = f_cls_teacher(snapshot.tokenizer, data.x, config)
    decoder, history = refresh_decoder(snapshot.decoder, data, partners, teacher, config,
                                       steps=steps, replay=replay, refreshes=refreshes,
                                       progress=progress)
    return snapshot._replace(decoder=decoder, trie=data.trie), history


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
    return RefreshData(x, codes, fresh_rows.astype(np.int64), y, snapshot.trie, ids)


@torch.no_grad()
def new_class_codes(tokenizer: SemanticTokenizer, data: RefreshData) -> RefreshData:
    """``data`` with every new class in a leaf of its own: the items of a label none
    of whose items is old get the code of their normalised mean f_cls, its last code
    moved to the nearest codeword no other item's identifier uses after that prefix
    (left as it is where every one is used)."""
    is_fresh = np.zeros(len(data.x), bool)
    is_fresh[data.fresh_rows] = True
    labels = data.labels.cpu().numpy()
    old_labels = np.unique(labels[~is_fresh])
    new = np.setdiff1d(np.unique(labels[is_fresh]), old_labels)
    if not len(new):
        return data
    rows = np.flatnonzero(np.isin(labels, new))
    groups = np.searchsorted(new, labels[rows])  # each row's new class, 0..len(new)-1
    f = tokenizer.f_cls(data.x[rows])
    centres = tokenizer.class_centres(f, torch.from_numpy(groups).to(f.device), len(new))
    ids = data.ids[rows]
    others = ~np.isin(data.trie.ids, ids)  # every other item of the index, labelled or not
    used = {tuple(code) for code in data.trie.codes[others].tolist()}
    quantizer = tokenizer.quantizer
    new_codes = np.empty((len(new), quantizer.num_codebooks), np.int64)
    for c, centre in enumerate(centres):
        code = quantizer.encode(centre[None])[0]
        prefix = tuple(code[:-1].tolist())
        residual = centre - quantizer.decode(code[None])[0] + quantizer.codebooks[-1, code[-1]]
        nearest = torch.cdist(residual[None], quantizer.codebooks[-1])[0].argsort().tolist()
        last = next((i for i in nearest if (*prefix, i) not in used), int(code[-1]))
        new_codes[c] = (*prefix, last)
        used.add((*prefix, last))
    codes = data.codes.clone()
    codes[torch.from_numpy(rows).to(codes.device)] = torch.from_numpy(
        new_codes[groups]).to(codes.device)
    trie = data.trie.remove(ids).insert(new_codes[groups], ids)
    return dataclasses.replace(data, codes=codes, trie=trie)


def default_steps(fresh: int, replay: float, batch_size: int) -> int:
    per_pass = math.ceil((fresh + round(replay * fresh)) / batch_size)
    return max(MIN_STEPS, DEFAULT_PASSES * per_pass)


def refresh_decoder(decoder: Decoder, data: RefreshData, partners: Partners,
                    teacher: Teacher | None, config: IndexConfig, *, steps: int,
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
                                              data.trie if dc.constrained_loss else None,
                                              teacher),
                          passes(), Plan(dc.lr * LR_SCALE, steps, 0), config,
                          "refresh decoder", progress)
    model.requires_grad_(False)
    return model, RefreshHistory(items=len(fresh), steps=steps, loss=loss)
