"""CLEAR stage 5: the three output configs of one row from its confidence scores."""

from __future__ import annotations

from dataclasses import replace

from builders.rows import Passage, QueryRow


def decide(row: QueryRow, pfns: list[Passage], confidence: dict[str, float], phi: float) -> dict[str, QueryRow]:
    """The three CLEAR configs for one row; ``confidence`` has every positive's cs and the cs of
    the PFNs that were scored (an unscored PFN is left where it was)."""
    human = [replace(p, score=confidence[p.docid]) for p in row.positive_passages]
    scored = [replace(p, score=confidence[p.docid]) for p in pfns if p.docid in confidence]
    negatives = [replace(p, score=None) for p in row.negative_passages]

    def without(docids: set[str]) -> list[Passage]:
        return [p for p in negatives if p.docid not in docids]

    best = human[0]
    for p in human[1:] + scored:  # strict '>' keeps the earlier one on ties: labelled first, then retrieval order
        if p.score > best.score:
            best = p
    best_is_human = any(best.docid == h.docid for h in human)
    promoted = [p for p in scored if p.score > phi]
    return {
        "clear_llm": row.with_passages(positives=[best], negatives=without({best.docid})),
        "clear_augment": row.with_passages(positives=human if best_is_human else human + [best],
                                           negatives=without(set() if best_is_human else {best.docid})),
        "clear_threshold": row.with_passages(positives=human + promoted, negatives=without({p.docid for p in promoted})),
    }

