"""Refined datasets -> training groups -> tokenised batches.

Rows are in the Tevatron layout RLHN publishes (``query_id, query, positive_passages,
negative_passages, subset``; optional ``positive_scores`` / ``negative_scores``, optional BGE
``prompt``). They come from a local dataset folder (the Hub layout our builders write, read with
``datasets.load_dataset(folder, config)``), a single ``.parquet`` / ``.jsonl`` file, or a Hub id.

A training *group* is one query, its positive(s) and k hard negatives, chosen deterministically
from ``(seed, epoch, row)`` so a resumed or re-run job sees the same groups:

- positives, ``sample`` mode: one positive per step, rotating with the epoch (Tevatron's way:
  ``positives[(h(seed, row) + epoch) % n]``);
- positives, ``amp``/``cmp`` mode: all positives (at most ``max_positives``: the highest
  confidence ones when scores are known, otherwise a window rotating with the epoch), with their
  confidence scores; the collator pads them and returns a mask;
- negatives: the row's negatives shuffled once per row (seeded), then a window of k that moves
  by k every epoch, so successive epochs walk through all of a row's negatives.

Rows with fewer than k negatives: we use the negatives the row has, without duplicates, and the
batch keeps a fixed slot layout with the missing slots masked out of the loss. We decided
against padding by sampling with replacement (a duplicated negative is counted twice in the
softmax denominator) and against borrowing other rows' negatives (those are already in-batch
negatives for every query). A row that ``hn_remove`` emptied still trains: its query sees its
positive against all in-batch passages. A row without any positive is an error that names it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.compute as pc
import torch

REQUIRED_COLUMNS = ("query", "positive_passages", "negative_passages")


class DataError(ValueError):
    """A dataset that cannot be trained on as it is."""


def load_rows(source: str, config: str | None = None, revision: str | None = None,
              split: str = "train", max_rows: int = -1, need_scores: bool = False):
    """Load refined rows as a ``datasets.Dataset`` and check they can be trained on."""
    import datasets

    if not source:
        raise DataError("no dataset given: set `dataset` to a folder, a .parquet/.jsonl file or a Hub id")
    path = Path(source)
    if path.is_file():
        suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
        builder = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".jsonl.gz": "json"}.get(suffix)
        if builder is None:
            raise DataError(f"{source}: unsupported file type {suffix!r}; use .parquet or .jsonl")
        ds = datasets.load_dataset(builder, data_files=str(path), split="train")
    else:
        ds = datasets.load_dataset(source, config, revision=revision, split=split)
    if max_rows > 0:
        ds = ds.select(range(min(max_rows, len(ds))))
    check_rows(ds, source, need_scores)
    return ds


def check_rows(ds, source: str, need_scores: bool = False) -> None:
    """Fail early, naming the offending query_ids, on rows that would break training."""
    missing = [c for c in REQUIRED_COLUMNS if c not in ds.column_names]
    if missing:
        raise DataError(
            f"{source}: missing column(s) {missing}; expected the Tevatron layout "
            f"(query_id, query, positive_passages, negative_passages, subset), got {ds.column_names}"
        )
    table = ds.with_format("arrow")[:]
    n_pos = pc.fill_null(pc.list_value_length(table.column("positive_passages")), 0).to_pylist()
    empty = [i for i, n in enumerate(n_pos) if n == 0]
    if empty:
        ids = [row_id(ds[i], i) for i in empty[:5]]
        raise DataError(
            f"{source}: {len(empty)} row(s) have no positive passage (first: {ids}); a query needs at "
            "least one positive to train on: drop those rows (e.g. the `remove` config) before training"
        )
    if need_scores and "positive_scores" not in ds.column_names:
        raise DataError(
            f"{source}: multi_positive=cmp needs per-positive confidence scores in a `positive_scores` "
            "column (CLEAR writes them); use multi_positive=amp for data without scores"
        )


def row_id(row: dict, index: int) -> str:
    return f"row {index} (query_id {row.get('query_id') or '?'})"


def passage_text(passage: dict) -> str:
    """Title folded into the text the way Tevatron/RLHN do (RLHN titles are empty)."""
    title = (passage.get("title") or "").strip()
    return f"{title} {passage['text']}" if title else passage["text"]


def _row_seed(seed: int, index: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _window(items: list, start: int, size: int) -> list:
    """``size`` consecutive items from ``start``, wrapping around, without repeats."""
    n = len(items)
    if n <= size:
        return list(items)
    return [items[(start + i) % n] for i in range(size)]


@dataclass
class Group:
    query: str
    positives: list[str]
    negatives: list[str]
    positive_scores: list[float] = field(default_factory=list)
    prompt: str | None = None
    query_id: str = ""


def build_group(row: dict, index: int, epoch: int, seed: int, num_negatives: int,
                mode: str = "sample", max_positives: int = 1) -> Group:
    """The group of row ``index`` for ``epoch``: see the module docstring for the rules."""
    positives = row.get("positive_passages") or []
    if not positives:
        raise DataError(f"{row_id(row, index)} has no positive passage")
    negatives = row.get("negative_passages") or []
    h = _row_seed(seed, index)

    scores = row.get("positive_scores")
    if mode == "cmp":
        if scores is None or len(scores) != len(positives) or any(s is None for s in scores):
            raise DataError(
                f"{row_id(row, index)}: multi_positive=cmp needs one confidence score per positive, "
                f"got positive_scores={scores!r} for {len(positives)} positives"
            )
    if mode == "sample":
        chosen = [(epoch + h) % len(positives)]
    elif mode == "cmp":
        chosen = sorted(range(len(positives)), key=lambda i: -float(scores[i]))[:max_positives]
    else:
        chosen = _window(list(range(len(positives))), (h + epoch * max_positives) % len(positives),
                         max_positives)

    neg_order = list(range(len(negatives)))
    torch_gen = torch.Generator().manual_seed(h % (2**63))
    if neg_order:
        neg_order = [neg_order[i] for i in torch.randperm(len(neg_order), generator=torch_gen).tolist()]
    neg_pick = _window(neg_order, (epoch * num_negatives) % max(len(neg_order), 1), num_negatives)
    if num_negatives == 0:
        neg_pick = []

    return Group(
        query=row["query"],
        positives=[passage_text(positives[i]) for i in chosen],
        negatives=[passage_text(negatives[i]) for i in neg_pick],
        positive_scores=[float(scores[i]) for i in chosen] if mode == "cmp" else [],
        prompt=row.get("prompt"),
        query_id=row.get("query_id") or "",
    )


class TrainGroups(torch.utils.data.Dataset):
    """Map-style dataset of groups; ``set_epoch`` reshuffles the row order and the groups."""

    def __init__(self, rows, num_negatives: int, mode: str = "sample", max_positives: int = 1,
                 seed: int = 42):
        self.rows = rows
        self.num_negatives = num_negatives
        self.mode = mode
        self.max_positives = 1 if mode == "sample" else max_positives
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        self.order = torch.randperm(len(self.rows), generator=gen).tolist()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Group:
        index = self.order[i]
        return build_group(self.rows[index], index, self.epoch, self.seed, self.num_negatives,
                           self.mode, self.max_positives)


class EmbedderCollator:
    """Groups -> tokenised queries and passages plus the slot layout the losses read.

    Every query owns ``slots = max_positives + num_negatives`` passage slots: positives first,
    then negatives. Only real passages are tokenised and encoded; ``slot_index`` says where each
    encoded passage goes in the ``[batch * slots]`` grid and ``slot_mask`` which slots are real.
    """

    def __init__(self, tokenizer, query_max_len: int, passage_max_len: int, num_negatives: int,
                 max_positives: int = 1, query_prefix: str = "", passage_prefix: str = "",
                 use_row_prompt: bool = False, pad_to_multiple_of: int | None = None):
        self.tokenizer = tokenizer
        self.query_max_len = query_max_len
        self.passage_max_len = passage_max_len
        self.num_negatives = num_negatives
        self.max_positives = max_positives
        self.query_prefix = query_prefix
        self.passage_prefix = passage_prefix
        self.use_row_prompt = use_row_prompt
        self.pad_to_multiple_of = pad_to_multiple_of

    @property
    def slots(self) -> int:
        return self.max_positives + self.num_negatives

    def query_text(self, group: Group) -> str:
        prompt = group.prompt if self.use_row_prompt and group.prompt else ""
        return f"{self.query_prefix}{prompt}{group.query}"

    def tokenize(self, texts: list[str], max_len: int) -> dict:
        return self.tokenizer(texts, padding=True, truncation=True, max_length=max_len,
                              pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="pt")

    def __call__(self, groups: list[Group]) -> dict:
        texts, slot_index = [], []
        pos_mask = torch.zeros(len(groups), self.max_positives, dtype=torch.bool)
        pos_scores = torch.zeros(len(groups), self.max_positives)
        for b, g in enumerate(groups):
            base = b * self.slots
            for j, text in enumerate(g.positives[: self.max_positives]):
                texts.append(self.passage_prefix + text)
                slot_index.append(base + j)
                pos_mask[b, j] = True
                if g.positive_scores:
                    pos_scores[b, j] = g.positive_scores[j]
            for j, text in enumerate(g.negatives[: self.num_negatives]):
                texts.append(self.passage_prefix + text)
                slot_index.append(base + self.max_positives + j)
        slot_mask = torch.zeros(len(groups) * self.slots, dtype=torch.bool)
        slot_index_t = torch.tensor(slot_index, dtype=torch.long)
        slot_mask[slot_index_t] = True
        return {
            "query": self.tokenize([self.query_text(g) for g in groups], self.query_max_len),
            "passage": self.tokenize(texts, self.passage_max_len),
            "slot_index": slot_index_t,
            "slot_mask": slot_mask,
            "pos_mask": pos_mask,
            "pos_scores": pos_scores,
        }
