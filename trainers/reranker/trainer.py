"""Reranker training on the shared loop (``trainers.trainer.Trainer``): groups -> (query, passage)
scores -> listwise / pointwise loss (``trainers/losses/``) -> the model and its head contract at
``<output_dir>/model``, evaluated by reranking a first-stage top-k, with its card.

Groups (1 positive + k negatives per query, rotated by epoch) come from ``trainers.data.TrainGroups``;
the loop, checkpoints, resume, accumulation and the end of the run are the shared trainer's.
"""

from __future__ import annotations

from pathlib import Path

import torch

from trainers.config_io import to_dict
from trainers.data import Group, TrainGroups, load_rows
from trainers.losses import reranker_loss
from trainers.reranker.config import RerankerConfig
from trainers.reranker.model import Reranker, build_reranker, save_reranker
from trainers.trainer import Trainer


class RerankerCollator:
    """Groups -> encoded real pairs + where each goes in the ``[batch, group_size]`` score grid.

    Slot 0 of every row is its positive, slots 1..k its negatives; a row with fewer than k
    negatives leaves its last slots empty (``mask`` False), never filled with repeats.
    """

    def __init__(self, reranker: Reranker, group_size: int):
        self.reranker = reranker
        self.group_size = group_size

    def __call__(self, groups: list[Group]) -> dict:
        pairs, slot_index = [], []
        mask = torch.zeros(len(groups), self.group_size, dtype=torch.bool)
        for b, g in enumerate(groups):
            passages = g.positives[:1] + g.negatives[: self.group_size - 1]
            for j, text in enumerate(passages):
                pairs.append((g.query, text))
                slot_index.append(b * self.group_size + j)
                mask[b, j] = True
        return {"inputs": self.reranker.encode(pairs), "slot_index": torch.tensor(slot_index), "mask": mask}


def score_grid(scores: torch.Tensor, batch: dict) -> torch.Tensor:
    grid = scores.new_zeros(batch["mask"].numel())
    return grid.index_copy(0, batch["slot_index"], scores).view(batch["mask"].shape)


class RerankerTrainer(Trainer):
    cfg: RerankerConfig

    def build(self, accelerator):
        cfg = self.cfg
        reranker = build_reranker(cfg)
        rows = load_rows(cfg.dataset, cfg.dataset_config, cfg.dataset_revision, cfg.dataset_split, cfg.max_rows)
        groups = TrainGroups(rows, cfg.num_negatives, "sample", 1, cfg.seed)
        self.loss = reranker_loss(cfg.loss)
        return reranker, groups, RerankerCollator(reranker, cfg.group_size)

    def training_step(self, model, batch: dict, accelerator) -> torch.Tensor:
        loss = self.loss(score_grid(model(**batch["inputs"]), batch), batch["mask"])
        accelerator.backward(loss)
        return loss.detach()

    def save(self, model: Reranker, model_dir: Path, state_dict: dict | None) -> None:
        save_reranker(model, model_dir, state_dict=state_dict)

    def evaluate(self, model_dir: Path) -> dict:
        cfg = self.cfg
        if not cfg.eval_beir_dir:
            return {}
        from trainers.embedder.model import resolve_model_path
        from trainers.evaluate import evaluate_reranker

        return evaluate_reranker(str(model_dir), cfg.eval_beir_dir, resolve_model_path(cfg.eval_first_stage),
                                 cfg.eval_top_k, cfg.eval_split, batch_size=cfg.per_device_eval_batch_size)

    def write_card(self, model_dir: Path, summary: dict) -> None:
        from cards.model_card import ModelCardInfo, write_model_card

        cfg = self.cfg
        write_model_card(model_dir, ModelCardInfo(
            kind=cfg.kind,
            base_model=cfg.model,
            dataset=cfg.dataset,
            dataset_config=cfg.dataset_config,
            dataset_revision=cfg.dataset_revision,
            loss=self.loss.name,
            loss_config=self.loss.config,
            loss_citation=self.loss.citation,
            hyperparameters=to_dict(cfg),
            hardware=summary["hardware"],
            train_seconds=summary["train_seconds"],
            metrics=summary["metrics"],
            eval_dataset=cfg.eval_beir_dir,
            license=cfg.license,
            head=cfg.head if cfg.kind == "llm_reranker" else None,
            see_also=list(cfg.card_see_also),
        ))


def train(cfg: RerankerConfig) -> Path:
    """Train a cross-encoder or LLM reranker; returns ``<output_dir>/model``."""
    return RerankerTrainer(cfg).train()
