"""TopK-PercPos (NV-Retriever): the teacher-model filter, no LLM.

A teacher scores every (query, passage) pair of a row. Negatives whose score is above
``margin`` (default 95 %) of the positive's score are treated as likely false negatives and
dropped; of the rest, the ``top_k`` highest-scoring are kept (all of them when ``top_k`` is
None), highest score first. It is the CPU-friendly refinement and a baseline in the ARHN
paper.

Teachers:
* ``bi-encoder``: cosine similarity of L2-normalised sentence-transformers embeddings (offline
  default: the bundled all-MiniLM-L6-v2); queries and passages are deduplicated and encoded
  in batches;
* ``cross-encoder``: a sentence-transformers ``CrossEncoder`` (``model`` is required), its
  logit squashed to [0, 1] by a sigmoid;
* ``row-scores``: the teacher scores the rows already carry (BGE ``pos_scores`` /
  ``neg_scores``); every passage must have one.

Rules worth knowing:
* a row with several positives is compared against its LOWEST-scoring positive (a negative
  that scores like the weakest labelled answer is as plausible as it);
* the cut-off is ``pos - (1 - margin) * |pos|``: ``margin * pos`` for the usual positive
  score, and still just below the positive when a cosine score is negative;
* a negative is dropped when its score is strictly above the cut-off;
* a row without positives is passed through unchanged and counted (``rows_without_positive``);
  a row left without negatives is kept and counted (``rows_without_negatives_left``);
* rows of ``never_edit_subsets`` (none by default: the filter needs no answer) pass unchanged
  and are counted (``rows_not_edited``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from builders.embedding import cross_scores, encode_unique, load_cross_encoder, load_embedder
from builders.methods.base import JudgeInfo, MethodResult, never_edits, subsets_tuple
from builders.rows import Passage, QueryRow


@dataclass
class PercPosSettings:
    teacher: Literal["bi-encoder", "cross-encoder", "row-scores"] = "bi-encoder"
    model: str | None = None  # sentence-transformers model id or path; None: bundled MiniLM (bi-encoder only)
    margin: float = 0.95  # drop negatives scoring above this fraction of the positive's score
    top_k: int | None = None  # keep this many of the remaining negatives; None keeps all
    batch_size: int = 64
    max_length: int | None = None  # teacher's max sequence length; None: the model's own
    query_prefix: str = ""  # e.g. "query: " for E5 teachers
    passage_prefix: str = ""  # e.g. "passage: "
    use_row_prompt: bool = False  # prepend the row's BGE instruction (``prompt``) to the query
    device: str | None = None
    config_name: str = "percpos"
    never_edit_subsets: tuple[str, ...] = ()  # passed through unchanged (``never_edits``)

    def __post_init__(self):
        self.never_edit_subsets = subsets_tuple(self.never_edit_subsets)
        if not 0.0 < self.margin <= 1.0:
            raise ValueError(f"percpos margin must be in (0, 1], got {self.margin}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"percpos top_k must be >= 0 or None, got {self.top_k}")
        if self.teacher == "cross-encoder" and not self.model:
            raise ValueError("percpos teacher 'cross-encoder' needs `model` (no cross-encoder is bundled); "
                             "use teacher 'bi-encoder' for the offline default")


def cutoff(positive_score: float, margin: float) -> float:
    """Scores strictly above this are dropped as likely false negatives."""
    return positive_score - (1.0 - margin) * abs(positive_score)


def _query_text(row: QueryRow, settings: PercPosSettings) -> str:
    instruction = (row.prompt or "") if settings.use_row_prompt else ""
    return settings.query_prefix + instruction + row.query


def teacher_scores(rows: list[QueryRow], settings: PercPosSettings, teacher=None) -> dict[tuple[str, str], float]:
    """(query_id, docid) -> teacher score for every positive and negative of every row."""
    pairs = {(row.query_id, p.docid): (row, p) for row in rows for p in row.positive_passages + row.negative_passages}
    if settings.teacher == "row-scores":
        out = {}
        for (qid, docid), (row, p) in pairs.items():
            if p.score is None:
                raise ValueError(
                    f"percpos teacher 'row-scores': query_id={qid} (subset {row.subset}) passage {docid} has no "
                    "teacher score; the source has no pos_scores/neg_scores: use teacher 'bi-encoder' or 'cross-encoder'"
                )
            out[(qid, docid)] = float(p.score)
        return out
    if settings.teacher == "cross-encoder":
        model = teacher or load_cross_encoder(settings.model, device=settings.device, max_length=settings.max_length)
        text_pairs = {key: (_query_text(row, settings), settings.passage_prefix + p.full_text) for key, (row, p) in pairs.items()}
        scored = cross_scores(model, text_pairs.values(), batch_size=settings.batch_size)
        return {key: scored[pair] for key, pair in text_pairs.items()}
    model = teacher or load_embedder(settings.model, device=settings.device, max_length=settings.max_length)
    queries = encode_unique(model, (_query_text(r, settings) for r in rows), batch_size=settings.batch_size, desc="percpos queries")
    passages = encode_unique(
        model, (settings.passage_prefix + p.full_text for _, p in pairs.values()), batch_size=settings.batch_size, desc="percpos passages"
    )
    out = {}
    for key, (row, p) in pairs.items():
        q = queries.matrix[queries.index[_query_text(row, settings)]]
        d = passages.matrix[passages.index[settings.passage_prefix + p.full_text]]
        out[key] = float(q @ d)
    return out


def run(rows: list[QueryRow], settings: PercPosSettings | None = None, *, teacher=None) -> MethodResult:
    """Filter every row's negatives with the teacher. ``teacher`` is an already loaded
    ``SentenceTransformer`` / ``CrossEncoder`` to reuse (else one is loaded from settings)."""
    settings = settings or PercPosSettings()
    result = MethodResult(name="percpos", configs={settings.config_name: []})
    model_name = settings.model or ("row teacher scores" if settings.teacher == "row-scores" else "all-MiniLM-L6-v2 (bundled)")
    result.judges.append(JudgeInfo(stage=f"percpos/{settings.teacher}", model=model_name, prompt_version="-", backend="local"))
    scores = teacher_scores(rows, settings, teacher) if rows else {}

    for row in rows:
        s = row.subset
        result.count(s, "rows_in")
        result.count(s, "negatives_in", len(row.negative_passages))
        result.count(s, "positives_added", 0)
        result.count(s, "judge_calls", 0)
        if not row.positive_passages:
            result.count(s, "rows_without_positive")
            result.configs[settings.config_name].append(row)
            continue
        if never_edits(s, settings.never_edit_subsets):
            result.count(s, "rows_not_edited")
            result.configs[settings.config_name].append(row)
            continue
        positive_score = min(scores[(row.query_id, p.docid)] for p in row.positive_passages)
        limit = cutoff(positive_score, settings.margin)
        below: list[tuple[float, int, Passage]] = []
        decisions: dict[str, str] = {}
        for i, p in enumerate(row.negative_passages):
            score = scores[(row.query_id, p.docid)]
            if score > limit:
                decisions[p.docid] = "removed_above_margin"
                result.count(s, "negatives_removed")
            else:
                below.append((score, i, p))
        below.sort(key=lambda item: (-item[0], item[1]))  # highest teacher score first, stable
        keep = below if settings.top_k is None else below[: settings.top_k]
        for _, _, p in below[len(keep) :]:
            decisions[p.docid] = "beyond_top_k"
            result.count(s, "negatives_beyond_top_k")
        for _, _, p in keep:
            decisions[p.docid] = "kept"
        result.count(s, "negatives_out", len(keep))
        if not keep:
            result.count(s, "rows_without_negatives_left")
        out = row.with_passages(negatives=[p for _, _, p in keep])
        result.configs[settings.config_name].append(out)
        for p in row.negative_passages:
            result.judgments.append(
                {
                    "method": "percpos",
                    "query_id": row.query_id,
                    "subset": s,
                    "docid": p.docid,
                    "teacher_score": scores[(row.query_id, p.docid)],
                    "positive_score": positive_score,
                    "cutoff": limit,
                    "decision": decisions[p.docid],
                }
            )
    for r in result.configs[settings.config_name]:  # per-config sizes, as the card's technique table reads them
        result.count(r.subset, f"{settings.config_name}:rows")
        result.count(r.subset, f"{settings.config_name}:positives", len(r.positive_passages))
        result.count(r.subset, f"{settings.config_name}:negatives", len(r.negative_passages))
    return result
