"""Configuration of one reranker training run (cross-encoder or LLM reranker).

A YAML recipe in ``trainers/configs/`` fills this dataclass through ``trainers.config_io``
(``kind: cross_encoder`` or ``kind: llm_reranker`` selects it in ``trainers/train.py``); every
field can be overridden on the command line (``--lr 1e-5``, ``--lora.r 16``).

- ``cross_encoder``: ``AutoModelForSequenceClassification`` with one logit over the
  ``(query, passage)`` pair; saved in the sentence-transformers ``CrossEncoder`` layout.
- ``llm_reranker``: a decoder LM scoring ``template`` filled with the query and passage, with
  either a ``causal_yes_no`` head (score = logit("yes") - logit("no") after the prompt) or a
  ``sequence_classification`` head (one logit on the last token); LoRA when ``lora_r > 0``.

Losses: ``listwise`` = softmax cross-entropy over each group (1 positive + k negatives, the
positive is the target); ``pointwise`` = binary cross-entropy per pair (positive 1, negatives 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DEFAULT_LLM_TEMPLATE = "Query: {query}\nDocument: {document}\nIs the document relevant to the query? Answer yes or no.\nAnswer:"


@dataclass
class RerankerConfig:
    kind: Literal["cross_encoder", "llm_reranker"] = "cross_encoder"
    # ---- model ----
    model: str = ""  # HF id or local folder; "minilm" = the bundled all-MiniLM-L6-v2
    head: Literal["sequence_classification", "causal_yes_no"] = "sequence_classification"
    template: str = DEFAULT_LLM_TEMPLATE  # llm_reranker only: must contain {query} and {document}
    yes_token: str = " yes"  # causal_yes_no: must be ONE token of the tokenizer (checked at build)
    no_token: str = " no"
    max_length: int = 256  # tokens per (query, passage) input
    bf16: bool = False  # bf16 mixed precision (accelerate) and bf16 weights for LLM rerankers
    gradient_checkpointing: bool = False
    attn_implementation: str | None = None

    # ---- loss ----
    loss: Literal["listwise", "pointwise"] = "listwise"
    group_size: int = 8  # 1 positive + (group_size - 1) hard negatives per query

    # ---- optimisation ----
    batch_size: int = 16  # queries (groups) per process per step
    lr: float = 2e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    max_grad_norm: float = 1.0
    seed: int = 42

    # ---- LoRA (peft) ----
    lora_r: int = 0  # 0 = full fine-tuning
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=list)
    merge_on_save: bool = True  # also write the merged model next to the adapter

    # ---- data ----
    dataset: str = ""  # local dataset folder, .parquet/.jsonl file, or Hub id
    dataset_config: str | None = None  # e.g. "rlhn"
    dataset_revision: str | None = None
    dataset_split: str = "train"
    max_rows: int = -1

    # ---- evaluation ----
    eval_beir_dir: str | None = None
    eval_split: str = "test"
    eval_first_stage: str = "minilm"  # embedder whose top-k is reranked
    eval_top_k: int = 100
    eval_batch_size: int = 32

    # ---- output ----
    output_dir: str = "runs/reranker"
    save_steps: int = 0  # > 0: checkpoint every N steps; a rerun resumes from the last one
    logging_steps: int = 10
    push_to: str | None = None  # "org/name" pushes weights + adapter + head contract + card
    push_version: str | None = None  # tag the pushed commit, e.g. "v1.0"
    license: str = "apache-2.0"
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1 (1 positive + k negatives), got {self.group_size}")
        if self.loss == "listwise" and self.group_size < 2:
            raise ValueError("loss=listwise needs group_size >= 2 (a positive and at least one negative)")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ValueError("set epochs > 0 or max_steps > 0")
        if self.lora_r > 0 and not self.lora_target_modules:
            raise ValueError("lora_r > 0 needs lora_target_modules, e.g. [q_proj, k_proj, v_proj, o_proj]")
        if self.kind == "cross_encoder" and self.head != "sequence_classification":
            raise ValueError("kind=cross_encoder uses head=sequence_classification (one logit per pair)")
        if self.kind == "llm_reranker" and ("{query}" not in self.template or "{document}" not in self.template):
            raise ValueError("template must contain {query} and {document}")

    @property
    def num_negatives(self) -> int:
        return self.group_size - 1
