"""Configuration of one embedder (bi-encoder) training run.

:class:`EmbedderConfig` is the shared :class:`trainers.config.TrainingConfig` (TrainingArguments names:
``learning_rate``, ``per_device_train_batch_size``, ``num_train_epochs`` ...) plus the embedder's own
fields. A YAML file in ``trainers/configs/`` with ``kind: embedder`` fills it; every field can be
overridden on the command line (``--learning_rate 1e-5``, ``--lora_r 16``). LoRA embedders are this same
config with ``lora_r > 0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from trainers.config import TrainingConfig, option


@dataclass
class EmbedderConfig(TrainingConfig):
    kind: Literal["embedder"] = option("embedder", "model kind (embedder here; cross_encoder / llm_reranker: RerankerConfig)")
    per_device_train_batch_size: int = option(32, "queries per process per micro-batch (each with its group of passages)")
    output_dir: str = option("runs/embedder", "run folder: checkpoints/, train_log.jsonl, summary, model/")

    # ---- model ----
    pooling: Literal["mean", "cls", "last"] = option("mean", "token pooling; last = the last token (EOS for LLM embedders)")
    normalize: bool = option(True, "L2-normalise embeddings (cosine similarity)")
    query_prefix: str = option("", 'text before every query, e.g. "query: " (E5); saved as the "query" prompt')
    passage_prefix: str = option("", 'text before every passage, e.g. "passage: "; saved as the "document" prompt')
    use_row_prompt: bool = option(False, "prepend the row's BGE `prompt` (instruction) to its query")
    query_max_len: int = option(64, "max tokens per query")
    passage_max_len: int = option(256, "max tokens per passage")
    append_eos: bool | None = option(None, "add EOS after each text; none = only for last-token pooling")

    # ---- loss ----
    temperature: float = option(0.05, "InfoNCE temperature (scores are q.p / temperature)")
    multi_positive: Literal["sample", "amp", "cmp"] = option(
        "sample", "sample: one positive per step, rotating with the epoch (InfoNCE); amp / cmp: every positive "
                  "(CLEAR's averaged / confidence-weighted multi-positive losses)")
    max_positives: int = option(4, "amp / cmp: at most this many positives per query (padded and masked)")
    gather_across_processes: bool = option(True, "in-batch negatives from every process (all-gather)")
    gradcache: bool = option(False, "GradCache: the full batch's contrastive loss in one chunk's activation memory")
    gradcache_chunk_size: int = option(32, "texts per forward chunk under GradCache")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.max_positives < 1:
            raise ValueError(f"max_positives must be >= 1, got {self.max_positives}")

    @property
    def eos_appended(self) -> bool:
        return self.pooling == "last" if self.append_eos is None else self.append_eos
