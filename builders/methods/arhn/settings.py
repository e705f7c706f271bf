"""ARHN/PRHN settings (the recipe's ``arhn:`` and ``prhn:`` sections); what they do is in
``builders.methods.arhn.stages``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from builders.methods.base import subsets_tuple


@dataclass
class ArhnSettings:
    max_negatives: int = 10  # N hard negatives per query (stored order); the rest stay unjudged
    retriever_tokenizer: str | None = None  # path or Hub id; None: the bundled all-MiniLM-L6-v2
    retriever_max_length: int | None = None  # tokens incl. special ones; None: from the retriever's config
    rank_on: Literal["snippets", "passages"] = "snippets"  # "passages" = PRHN
    hallucination_as_no_answer: bool = True
    positive_without_snippet: Literal["skip", "rank"] = "skip"  # "rank": NO_ANSWER positive still anchors
    never_edit_subsets: tuple[str, ...] = ("arguana",)  # left as they are (``builders.methods.base.never_edits``)
    constrained: Literal["auto", "off"] = "auto"  # regex-constrained output format where the backend has it
    copy_sentences: bool = False  # also constrain snippets to 1-3 of the document's sentences (tiny judges)
    temperature: float = 0.1
    extract_max_new_tokens: int = 1536
    rank_max_new_tokens: int = 96

    def __post_init__(self):
        if self.rank_on not in ("snippets", "passages"):
            raise ValueError(f"arhn.rank_on must be 'snippets' (ARHN) or 'passages' (PRHN), got {self.rank_on!r}")
        if self.positive_without_snippet not in ("skip", "rank"):
            raise ValueError(f"arhn.positive_without_snippet must be 'skip' or 'rank', got {self.positive_without_snippet!r}")
        if self.constrained not in ("auto", "off"):
            raise ValueError(f"arhn.constrained must be 'auto' or 'off', got {self.constrained!r}")
        if self.max_negatives < 1:
            raise ValueError(f"arhn.max_negatives must be >= 1, got {self.max_negatives}")
        self.never_edit_subsets = subsets_tuple(self.never_edit_subsets)

    @property
    def prefix(self) -> str:
        return "prhn" if self.rank_on == "passages" else "arhn"
