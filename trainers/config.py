"""The fields every training run has, named and meant as in ``transformers.TrainingArguments``.

``EmbedderConfig`` (``trainers/embedder/config.py``) and ``RerankerConfig`` (``trainers/reranker/config.py``)
extend :class:`TrainingConfig` with their model's own fields (pooling, temperature, head, loss ...). A YAML
file in ``trainers/configs/`` fills one of them, ``kind`` picking which, and ``trainers.config_io.ConfigParser``
reads it with ``--field value`` overrides; each field's ``help`` is what ``trainers/train.py <config.yaml>
--help`` prints. :data:`RENAMED` keeps the names these fields had before: a config or an override that
still uses one is refused with the new name (``trainers.config_io``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# old field name -> its transformers.TrainingArguments name
RENAMED = {
    "lr": "learning_rate",
    "epochs": "num_train_epochs",
    "batch_size": "per_device_train_batch_size",
    "eval_batch_size": "per_device_eval_batch_size",
    "warmup_ratio": "warmup_steps",  # a float in [0, 1) is a ratio, as warmup_ratio was
    "num_workers": "dataloader_num_workers",
}
KINDS = ("embedder", "cross_encoder", "llm_reranker")


def option(default: Any, help: str, **metadata: Any):
    """A config field with its ``--help`` text (a list default is copied for every instance)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **metadata})
    return field(default=default, metadata={"help": help, **metadata})


@dataclass
class TrainingConfig:
    kind: str = option("", f"model kind, one of {', '.join(KINDS)}; picks the config class")
    model: str = option("", "HF id or local folder of the base model; `minilm` = the bundled all-MiniLM-L6-v2")

    # ---- optimisation (transformers.TrainingArguments names and meanings) ----
    per_device_train_batch_size: int = option(32, "queries (groups) per process per micro-batch")
    gradient_accumulation_steps: int = option(
        1, "micro-batches per optimizer step (in-batch negatives stay within a micro-batch; GradCache "
           "is the way to a larger contrastive batch)")
    learning_rate: float = option(2e-5, "peak learning rate of AdamW (linear warmup, then linear decay to 0)")
    weight_decay: float = option(0.0, "AdamW weight decay; biases and norm weights get none, as in TrainingArguments")
    warmup_steps: float = option(0.0, "linear warmup: an integer >= 1 is a number of optimizer steps, "
                                      "a float in [0, 1) a ratio of the total steps")
    num_train_epochs: float = option(1.0, "passes over the training groups (fractions allowed)")
    max_steps: int = option(-1, "> 0: train this many optimizer steps, overriding num_train_epochs")
    max_grad_norm: float = option(1.0, "gradient clipping norm; 0 = no clipping")
    seed: int = option(42, "seed of the model init, dropout and the groups (negatives, positives) of every epoch")
    bf16: bool = option(False, "bf16 mixed precision (accelerate); LoRA LLMs also load their weights in bf16")
    gradient_checkpointing: bool = option(False, "recompute activations in backward (non-reentrant)")
    attn_implementation: str | None = option(None, "attention kernel passed to from_pretrained, e.g. sdpa, flash_attention_2")

    # ---- LoRA (peft) ----
    lora_r: int = option(0, "LoRA rank; 0 = full fine-tuning (YAML: `lora: {r: ...}`)")
    lora_alpha: int = option(32, "LoRA alpha")
    lora_dropout: float = option(0.05, "LoRA dropout")
    lora_target_modules: list[str] = option([], "modules that get LoRA adapters, e.g. q_proj k_proj v_proj o_proj")
    merge_on_save: bool = option(True, "LoRA: also save the merged model (what SentenceTransformer / CrossEncoder load)")

    # ---- data ----
    dataset: str = option("", "refined dataset: a local dataset folder, a .parquet/.jsonl file, or a Hub id")
    dataset_config: str | None = option(None, "dataset config (subset), e.g. rlhn, hn_remove, clear")
    dataset_revision: str | None = option(None, "dataset revision (tag, branch or commit) to pin")
    dataset_split: str = option("train", "dataset split")
    max_rows: int = option(-1, "> 0: use only the first rows (smoke runs)")
    group_size: int = option(8, "passages per query in a group: 1 positive + (group_size - 1) hard negatives")
    dataloader_num_workers: int = option(0, "DataLoader worker processes")

    # ---- output, evaluation, Hub ----
    output_dir: str = option("runs/model", "run folder: checkpoints/, train_log.jsonl, summary, model/")
    save_steps: int = option(0, "> 0: checkpoint every N optimizer steps; rerunning the same config resumes from the last one")
    logging_steps: int = option(10, "a train_log.jsonl line every N optimizer steps (and at the last)")
    eval_beir_dir: str | None = option(None, "BEIR folder to evaluate the saved model on after training; none = skip")
    per_device_eval_batch_size: int = option(64, "batch size of the evaluation after training")
    card_see_also: list[str] = option([], "links (URLs or paths) the model card lists under See also, e.g. a results table")
    push_to: str | None = option(None, "Hub repo `org/name` to push the model, card and training config to",
                                 aliases=["--push"])
    push_version: str | None = option(None, "tag of the pushed commit, e.g. v1.0", aliases=["--version"])

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {list(KINDS)}, got {self.kind!r}")
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1 (1 positive + k negatives), got {self.group_size}")
        if self.num_train_epochs <= 0 and self.max_steps <= 0:
            raise ValueError("set num_train_epochs > 0 or max_steps > 0")
        if self.gradient_accumulation_steps < 1:
            raise ValueError(f"gradient_accumulation_steps must be >= 1, got {self.gradient_accumulation_steps}")
        if self.warmup_steps < 0 or (self.warmup_steps >= 1 and not float(self.warmup_steps).is_integer()):
            raise ValueError(f"warmup_steps is a number of steps (an integer >= 1) or a ratio in [0, 1), "
                             f"got {self.warmup_steps}")
        if self.lora_r > 0 and not self.lora_target_modules:
            raise ValueError("lora_r > 0 needs lora_target_modules, e.g. [q_proj, k_proj, v_proj, o_proj]")

    @property
    def num_negatives(self) -> int:
        return self.group_size - 1

    def warmup_for(self, total_steps: int) -> int:
        """Warmup in optimizer steps: ``warmup_steps`` itself, or that ratio of ``total_steps``."""
        return int(self.warmup_steps * total_steps) if self.warmup_steps < 1 else int(self.warmup_steps)
