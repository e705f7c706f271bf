"""Configuration of one reranker training run (cross-encoder or LLM reranker).

:class:`RerankerConfig` is the shared :class:`trainers.config.TrainingConfig` (TrainingArguments names)
plus the reranker's own fields. A YAML file in ``trainers/configs/`` with ``kind: cross_encoder`` or
``kind: llm_reranker`` fills it; every field can be overridden on the command line
(``--learning_rate 1e-5``, ``--lora_r 16``).

- ``cross_encoder``: ``AutoModelForSequenceClassification`` with one logit over the
  ``(query, passage)`` pair; saved in the sentence-transformers ``CrossEncoder`` layout.
- ``llm_reranker``: a decoder LM scoring ``template`` filled with the query and passage, with
  either a ``causal_yes_no`` head (score = logit("yes") - logit("no") after the prompt) or a
  ``sequence_classification`` head (one logit on the last token); LoRA when ``lora_r > 0``.

Losses (``trainers/losses/``): ``listwise`` = softmax cross-entropy over each group (1 positive + k
negatives, the positive is the target); ``pointwise`` = binary cross-entropy per pair (positive 1, negatives 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from trainers.config import TrainingConfig, option

DEFAULT_LLM_TEMPLATE = "Query: {query}\nDocument: {document}\nIs the document relevant to the query? Answer yes or no.\nAnswer:"


@dataclass
class RerankerConfig(TrainingConfig):
    kind: Literal["cross_encoder", "llm_reranker"] = option("cross_encoder", "model kind: cross_encoder or llm_reranker")
    per_device_train_batch_size: int = option(16, "queries (groups) per process per micro-batch")
    output_dir: str = option("runs/reranker", "run folder: checkpoints/, train_log.jsonl, summary, model/")
    per_device_eval_batch_size: int = option(32, "batch size of the evaluation after training")

    # ---- model ----
    head: Literal["sequence_classification", "causal_yes_no"] = option(
        "sequence_classification", "llm_reranker: one logit from a linear head on the last token, or "
                                   "logit(yes_token) - logit(no_token)")
    template: str = option(DEFAULT_LLM_TEMPLATE, "llm_reranker prompt; must contain {query} and {document}")
    yes_token: str = option(" yes", "causal_yes_no: the 'relevant' answer, exactly ONE token of the tokenizer")
    no_token: str = option(" no", "causal_yes_no: the 'not relevant' answer, exactly one token")
    max_length: int = option(256, "tokens per (query, passage) input")

    # ---- loss ----
    loss: Literal["listwise", "pointwise"] = option("listwise", "listwise: softmax CE over each group; pointwise: BCE per pair")

    # ---- evaluation ----
    eval_split: str = option("test", "qrels split of eval_beir_dir")
    eval_first_stage: str = option("minilm", "embedder whose top-k the evaluation reranks")
    eval_top_k: int = option(100, "first-stage candidates reranked per query")

    # ---- card ----
    license: str = option("apache-2.0", "license in the model card's metadata")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss == "listwise" and self.group_size < 2:
            raise ValueError("loss=listwise needs group_size >= 2 (a positive and at least one negative)")
        if self.kind == "cross_encoder" and self.head != "sequence_classification":
            raise ValueError("kind=cross_encoder uses head=sequence_classification (one logit per pair)")
        if self.kind == "llm_reranker" and ("{query}" not in self.template or "{document}" not in self.template):
            raise ValueError("template must contain {query} and {document}")
