"""The one row model for a training query: Tevatron layout as published by RLHN.

A row is ``{query_id, query, positive_passages, negative_passages, subset}`` with
``query_id = md5(query)`` and passages ``{docid = md5(text), title, text}``. BGE's per-row
``prompt`` and ``type`` and its teacher scores ride along when the source has them, so a
row converts to and from the FlagEmbedding jsonl layout without loss.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace


def md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)  # slots: a build holds ~50,000 passages per chunk in memory
class Passage:
    docid: str
    text: str
    title: str = ""
    score: float | None = None  # teacher score (BGE pos_scores/neg_scores), when known

    @classmethod
    def from_text(cls, text: str, title: str = "", score: float | None = None) -> Passage:
        return cls(docid=md5(text), text=text, title=title, score=score)

    def to_dict(self) -> dict:
        return {"docid": self.docid, "title": self.title, "text": self.text}

    def __reduce__(self):  # the reader process sends rows pickled: a short pickle, through __init__
        return Passage, (self.docid, self.text, self.title, self.score)

    @property
    def full_text(self) -> str:
        """Title folded into text, the way RLHN publishes passages (empty title)."""
        return f"{self.title} {self.text}".strip() if self.title else self.text


@dataclass(frozen=True, slots=True)
class QueryRow:
    query_id: str
    query: str
    positive_passages: tuple[Passage, ...]
    negative_passages: tuple[Passage, ...]
    subset: str
    prompt: str | None = None  # BGE instruction for the query side
    type: str | None = None  # BGE row type (normal, symmetric_class, only_1neg, ...)
    extra: dict = field(default_factory=dict, compare=False)  # source columns we pass through

    @classmethod
    def from_query(cls, query: str, positives, negatives, subset: str, **kw) -> QueryRow:
        return cls(md5(query), query, tuple(positives), tuple(negatives), subset, **kw)

    def __reduce__(self):  # through __init__, as ``Passage.__reduce__``
        return QueryRow, (self.query_id, self.query, self.positive_passages, self.negative_passages, self.subset,
                          self.prompt, self.type, self.extra)

    def with_passages(self, positives=None, negatives=None) -> QueryRow:
        return replace(
            self,
            positive_passages=self.positive_passages if positives is None else tuple(positives),
            negative_passages=self.negative_passages if negatives is None else tuple(negatives),
        )

    # ---- Tevatron layout (what `rlhn/rlhn-680K` users load) ----
    def to_tevatron(self, with_scores: bool = False) -> dict:
        out = {
            "query_id": self.query_id,
            "query": self.query,
            "positive_passages": [p.to_dict() for p in self.positive_passages],
            "negative_passages": [p.to_dict() for p in self.negative_passages],
            "subset": self.subset,
        }
        if with_scores:
            out["positive_scores"] = [p.score for p in self.positive_passages]
            out["negative_scores"] = [p.score for p in self.negative_passages]
        return out

    @classmethod
    def from_tevatron(cls, d: dict, subset: str | None = None) -> QueryRow:
        pos_scores = d.get("positive_scores") or []
        neg_scores = d.get("negative_scores") or []

        def passages(items, scores):
            out = []
            for i, p in enumerate(items or []):
                s = scores[i] if i < len(scores) else None
                out.append(Passage(p.get("docid") or md5(p["text"]), p["text"], p.get("title") or "", s))
            return tuple(out)

        query = d["query"]
        return cls(
            query_id=d.get("query_id") or md5(query),
            query=query,
            positive_passages=passages(d.get("positive_passages"), pos_scores),
            negative_passages=passages(d.get("negative_passages"), neg_scores),
            subset=d.get("subset") or subset or "unknown",
            prompt=d.get("prompt"),
            type=d.get("type"),
        )

    # ---- FlagEmbedding / BGE jsonl layout ----
    def to_bge(self) -> dict:
        out = {
            "query": self.query,
            "pos": [p.full_text for p in self.positive_passages],
            "neg": [p.full_text for p in self.negative_passages],
        }
        if all(p.score is not None for p in self.positive_passages + self.negative_passages):
            out["pos_scores"] = [p.score for p in self.positive_passages]
            out["neg_scores"] = [p.score for p in self.negative_passages]
        if self.prompt is not None:
            out["prompt"] = self.prompt
        if self.type is not None:
            out["type"] = self.type
        return out

    @classmethod
    def from_bge(cls, d: dict, subset: str) -> QueryRow:
        """Build a row from a validated BGE dict (see ``builders.sources.readers`` for validation)."""
        pos_scores = d.get("pos_scores") or []
        neg_scores = d.get("neg_scores") or []

        def passages(texts, scores):
            return tuple(
                Passage.from_text(t, score=float(scores[i]) if i < len(scores) else None)
                for i, t in enumerate(texts)
            )

        return cls.from_query(
            d["query"],
            passages(d.get("pos") or [], pos_scores),
            passages(d.get("neg") or [], neg_scores),
            subset,
            prompt=d.get("prompt"),
            type=d.get("type"),
        )
