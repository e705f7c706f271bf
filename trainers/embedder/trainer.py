"""Embedder training on the shared loop (``trainers.trainer.Trainer``): groups -> encoder ->
InfoNCE / AMP / CMP (gathered across processes, optionally through GradCache) -> a
sentence-transformers folder at ``<output_dir>/model``, evaluated on a BEIR folder, with its card.

Lean on purpose (Tevatron-style): what is here is only what an embedder does differently from a
reranker; the loop, checkpoints, resume, accumulation and the end of the run are the shared trainer's.
"""

from __future__ import annotations

from pathlib import Path

import torch

from trainers.config_io import to_dict
from trainers.data import EmbedderCollator, TrainGroups, load_rows
from trainers.embedder.config import EmbedderConfig
from trainers.embedder.gradcache import CITATION as GRADCACHE_CITATION
from trainers.embedder.gradcache import gradcache_step
from trainers.embedder.model import Embedder, public_model_name
from trainers.losses import loss_for
from trainers.trainer import Trainer


def scatter_passages(p_real: torch.Tensor, batch: dict) -> torch.Tensor:
    """Encoded real passages -> the ``[batch * slots, d]`` grid the losses read (empty slots = 0)."""
    grid = p_real.new_zeros(batch["slot_mask"].shape[0], p_real.shape[1])
    return grid.index_copy(0, batch["slot_index"], p_real)


def dataset_prompts(rows, use_row_prompt: bool) -> dict[str, str]:
    """Per-subset BGE instructions, saved as extra named prompts (``encode_query(q, prompt_name=subset)``)."""
    if not use_row_prompt or "prompt" not in rows.column_names:
        return {}
    cols = rows.select_columns([c for c in ("subset", "prompt") if c in rows.column_names])
    found: dict[str, str] = {}
    for row in cols:
        if row.get("prompt"):
            found.setdefault(row.get("subset") or "default", row["prompt"])
    return found


class EmbedderTrainer(Trainer):
    cfg: EmbedderConfig

    def build(self, accelerator):
        cfg = self.cfg
        embedder = Embedder.from_config(cfg)
        self.rows = load_rows(cfg.dataset, cfg.dataset_config, cfg.dataset_revision, cfg.dataset_split,
                              cfg.max_rows, need_scores=cfg.multi_positive == "cmp")
        groups = TrainGroups(self.rows, cfg.num_negatives, cfg.multi_positive, cfg.max_positives, cfg.seed)
        collator = EmbedderCollator(embedder.tokenizer, cfg.query_max_len, cfg.passage_max_len, cfg.num_negatives,
                                    groups.max_positives, cfg.query_prefix, cfg.passage_prefix, cfg.use_row_prompt,
                                    pad_to_multiple_of=8 if accelerator.device.type == "cuda" else None)
        self.loss = loss_for(cfg.multi_positive, cfg.temperature, cfg.gather_across_processes)
        # the loss of the gathered (global) batch reaches each process through its own shard only and DDP
        # averages gradients over processes: backpropagating loss * world_size gives the global gradient
        self.loss_scale = float(accelerator.num_processes) if cfg.gather_across_processes else 1.0
        return embedder, groups, collator

    def check(self, accelerator) -> None:
        if self.cfg.gradcache and accelerator.distributed_type.value == "DEEPSPEED":
            raise ValueError("gradcache=true is not supported under DeepSpeed (its engine owns backward); "
                             "use DDP, or ZeRO with a smaller per_device_train_batch_size")

    def training_step(self, model, batch: dict, accelerator) -> torch.Tensor:
        if self.cfg.gradcache:
            return gradcache_step(
                lambda features: model(query=features)[0], [batch["query"], batch["passage"]],
                lambda q, p: self.loss(q, scatter_passages(p, batch), batch),
                self.cfg.gradcache_chunk_size, backward=accelerator.backward,
                no_sync=lambda: accelerator.no_sync(model), loss_scale=self.loss_scale)
        q, p_real = model(query=batch["query"], passage=batch["passage"])  # one forward: what DDP expects
        loss = self.loss(q, scatter_passages(p_real, batch), batch)
        accelerator.backward(loss * self.loss_scale)
        return loss.detach()

    def save(self, model: Embedder, model_dir: Path, state_dict: dict | None) -> None:
        cfg = self.cfg
        model.save(model_dir, merge=cfg.merge_on_save, state_dict=state_dict,
                   extra_prompts={subset: cfg.query_prefix + prompt  # the query text as trained
                                  for subset, prompt in dataset_prompts(self.rows, cfg.use_row_prompt).items()})

    def evaluate(self, model_dir: Path) -> dict:
        if not self.cfg.eval_beir_dir or not (model_dir / "modules.json").exists():
            return {}
        from trainers.evaluate import evaluate_embedder

        # each query's metrics beside train_summary.json: what a paired test between two runs reads
        return evaluate_embedder(str(model_dir), self.cfg.eval_beir_dir, batch_size=self.cfg.per_device_eval_batch_size,
                                 per_query_out=model_dir.parent / "eval_per_query.json")

    def write_card(self, model_dir: Path, summary: dict) -> None:
        """The model card (``cards.model_card``) next to the saved model."""
        from cards.model_card import ModelCardInfo, write_model_card

        cfg = self.cfg
        write_model_card(model_dir, ModelCardInfo(
            kind="embedder",
            base_model=public_model_name(cfg.model),
            dataset=cfg.dataset,
            dataset_config=cfg.dataset_config,
            dataset_revision=cfg.dataset_revision,
            loss=self.loss.name,
            loss_config=self.loss.config,
            loss_citation=self.loss.citation + ("\n" + GRADCACHE_CITATION if cfg.gradcache else ""),
            hyperparameters=to_dict(cfg),
            hardware=summary["hardware"],
            train_seconds=summary["train_seconds"],
            metrics=summary["metrics"],
            eval_dataset=cfg.eval_beir_dir,
            model_id=cfg.push_to,
            see_also=list(cfg.card_see_also),
        ))


def train(cfg: EmbedderConfig) -> Path:
    """Train an embedder; returns ``<output_dir>/model``."""
    return EmbedderTrainer(cfg).train()
