"""CLEAR's settings, its error and the per-query state its stages fill in (``builders.methods.clear.stages``)."""

from __future__ import annotations

from dataclasses import dataclass

from builders.methods.base import subsets_tuple
from builders.rows import Passage, QueryRow


class ClearError(RuntimeError):
    """CLEAR cannot go on (the judge cannot score continuations, bad corpus, ...)."""


@dataclass
class ClearSettings:
    retriever: str | None = None  # sentence-transformers id or path; None: bundled all-MiniLM-L6-v2
    corpus: str | None = None  # BEIR-style corpus.jsonl ({_id, title, text}); None: the rows' own passages
    top_n: int = 20  # passages retrieved per query
    tau: float = 0.95  # PFN: similarity > tau * s+
    phi: float = 0.3  # clear_threshold: PFNs with cs > phi become positives
    max_pfn: int | None = None  # score at most this many PFNs per query (most similar first); None: all
    answer_fields: tuple[str, ...] = ("answer", "answers")  # looked up in the row's `extra`
    extract_answers: bool = True  # no answer column: the judge copies one from the labelled positive
    extract_copy_sentences: bool = False  # constrain the copied answer to the passage's sentences (tiny judges)
    extract_temperature: float = 0.1
    extract_max_new_tokens: int = 256
    query_prefix: str = ""  # e.g. "query: " for E5 retrievers
    passage_prefix: str = ""  # e.g. "passage: "
    use_row_prompt: bool = False  # prepend the row's BGE instruction to the query
    retriever_max_length: int | None = None  # also the cut applied to passages shown to the judge
    batch_size: int = 64
    device: str | None = None
    never_edit_subsets: tuple[str, ...] = ("arguana",)  # counter-argument "positives" have no answer (``never_edits``)
    concurrency: int | None = None  # judge calls in flight; None: the backend's own
    max_attempts: int = 6  # per call, for retryable errors

    def __post_init__(self):
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"clear tau must be in (0, 1], got {self.tau}")
        if self.top_n < 1:
            raise ValueError(f"clear top_n must be >= 1, got {self.top_n}")
        # YAML gives lists (or one string): keep tuples
        self.answer_fields = (self.answer_fields,) if isinstance(self.answer_fields, str) else tuple(self.answer_fields)
        self.never_edit_subsets = subsets_tuple(self.never_edit_subsets)


@dataclass
class ClearQuery:
    row: QueryRow
    pfns: list[tuple[Passage, float]]  # (passage, similarity), most similar first
    positive_similarity: float
    answer: str | None = None
    answer_source: str | None = None  # "dataset" | "extracted"
    confidence: dict[str, float] | None = None  # docid -> cs (scored passages only)

