"""Configuration of one embedder (bi-encoder) training run.

A YAML recipe in ``trainers/configs/`` fills this dataclass (see ``trainers.config_io``); every
field can be overridden on the command line (``--lr 1e-5``, ``--lora.r 16``). LoRA embedders are
this same config with ``lora_r > 0``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class EmbedderConfig:
    # ---- model ----
    model: str = ""  # HF id or local folder; "minilm" = the bundled all-MiniLM-L6-v2
    pooling: Literal["mean", "cls", "last"] = "mean"
    normalize: bool = True
    query_prefix: str = ""  # e.g. "query: " (E5); saved as the "query" prompt
    passage_prefix: str = ""  # e.g. "passage: "; saved as the "document" prompt
    use_row_prompt: bool = False  # prepend the row's BGE `prompt` (instruction) to the query
    query_max_len: int = 64
    passage_max_len: int = 256
    append_eos: bool | None = None  # add EOS after each text; None = only for last-token pooling
    bf16: bool = False  # bf16 mixed precision (accelerate) / bf16 weights for LoRA LLMs
    gradient_checkpointing: bool = False
    attn_implementation: str | None = None  # e.g. "sdpa", "flash_attention_2"

    # ---- loss ----
    temperature: float = 0.05
    group_size: int = 8  # 1 positive + (group_size - 1) hard negatives per query
    multi_positive: Literal["sample", "amp", "cmp"] = "sample"
    max_positives: int = 4  # AMP/CMP: at most this many positives per query (padded + masked)
    gather_across_processes: bool = True  # in-batch negatives from every process

    # ---- optimisation ----
    batch_size: int = 32  # queries per process per step
    lr: float = 2e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    max_grad_norm: float = 1.0
    gradcache: bool = False
    gradcache_chunk_size: int = 32  # texts per forward chunk under GradCache
    seed: int = 42

    # ---- LoRA (peft) ----
    lora_r: int = 0  # 0 = full fine-tuning
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=list)
    merge_on_save: bool = True  # also write the merged model (what SentenceTransformer loads)

    # ---- data ----
    dataset: str = ""  # local dataset folder, .parquet/.jsonl file, or Hub id
    dataset_config: str | None = None  # e.g. "rlhn"
    dataset_revision: str | None = None
    dataset_split: str = "train"
    max_rows: int = -1  # > 0: use only the first rows (smoke runs)

    # ---- output ----
    output_dir: str = "runs/embedder"
    save_steps: int = 0  # > 0: checkpoint every N steps; a rerun resumes from the last one
    logging_steps: int = 10
    eval_beir_dir: str | None = None
    eval_batch_size: int = 64
    push_to: str | None = None  # "org/name" pushes weights + card
    push_version: str | None = None
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1 (1 positive + k negatives), got {self.group_size}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.max_positives < 1:
            raise ValueError(f"max_positives must be >= 1, got {self.max_positives}")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ValueError("set epochs > 0 or max_steps > 0")
        if self.lora_r > 0 and not self.lora_target_modules:
            raise ValueError("lora_r > 0 needs lora_target_modules, e.g. [q_proj, k_proj, v_proj, o_proj]")

    @property
    def num_negatives(self) -> int:
        return self.group_size - 1

    @property
    def eos_appended(self) -> bool:
        return self.pooling == "last" if self.append_eos is None else self.append_eos
