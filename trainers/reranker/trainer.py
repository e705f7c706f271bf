"""Reranker training loop on accelerate: groups -> (query, passage) scores -> listwise/pointwise loss
-> save, evaluate (rerank a first-stage top-k), card, push.

The loop has the embedder trainer's shape (``trainers.embedder.trainer``): DDP and DeepSpeed
through ``accelerator.prepare``, bf16 mixed precision when configured, checkpoints every
``save_steps`` under ``<output_dir>/checkpoints/step-N`` with resume from the last one. Groups
(1 positive + k negatives per query, rotated by epoch) come from ``trainers.data.TrainGroups``.
The final model is at ``<output_dir>/model`` with its head contract (``trainers.reranker.model``).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from trainers.config_io import to_dict, write_training_config
from trainers.data import Group, TrainGroups, load_rows
from trainers.embedder.trainer import STATE_FILE, final_state_dict, hardware, last_checkpoint, log_and_checkpoint
from trainers.losses import reranker_loss
from trainers.reranker.config import RerankerConfig
from trainers.reranker.model import Reranker, build_reranker, save_reranker


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


def train(cfg: RerankerConfig) -> Path:
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import get_linear_schedule_with_warmup

    accelerator = Accelerator(mixed_precision="bf16" if cfg.bf16 else "no")
    set_seed(cfg.seed)
    output_dir = Path(cfg.output_dir)
    started = time.time()

    reranker = build_reranker(cfg)
    rows = load_rows(cfg.dataset, cfg.dataset_config, cfg.dataset_revision, cfg.dataset_split, cfg.max_rows)
    groups = TrainGroups(rows, cfg.num_negatives, "sample", 1, cfg.seed)
    loader = torch.utils.data.DataLoader(groups, batch_size=cfg.batch_size, shuffle=False,
                                         collate_fn=RerankerCollator(reranker, cfg.group_size),
                                         num_workers=cfg.num_workers, drop_last=False,
                                         # own generator: building the iterator must not draw from the
                                         # global RNG, so dropout replays exactly on resume
                                         generator=torch.Generator().manual_seed(cfg.seed))
    loss_fn = reranker_loss(cfg.loss)
    params = [p for p in reranker.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(groups) / (cfg.batch_size * accelerator.num_processes))
    total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.epochs * steps_per_epoch)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    # the scheduler stays unprepared: accelerate would step it once per process per step, while
    # total_steps here already counts optimizer steps; registered so checkpoints carry it
    model, optimizer, loader = accelerator.prepare(reranker, optimizer, loader)
    accelerator.register_for_checkpointing(scheduler)

    step, epoch, skip = 0, 0, 0
    resume_from = last_checkpoint(output_dir)
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        state = json.loads((resume_from / STATE_FILE).read_text())
        step, epoch, skip = state["step"], state["epoch"], state["step_in_epoch"]
        accelerator.print(f"resuming from {resume_from} (step {step}, epoch {epoch})")

    log_path = output_dir / "train_log.jsonl"
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "train_config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
    bar = tqdm(total=total_steps, initial=step, desc="train", disable=not accelerator.is_local_main_process,
               dynamic_ncols=True)
    model.train()
    last_loss = float("nan")
    while step < total_steps:
        epoch_loader = accelerator.skip_first_batches(loader, skip) if skip else loader
        # accelerate's loaders call dataset.set_epoch(<their own pass counter>) when iterated, which is
        # wrong after a resume (a fresh skip-loader counts from 0): give them the real epoch, which they
        # pass on to TrainGroups.set_epoch
        epoch_loader.set_epoch(epoch)
        step_in_epoch = skip
        for batch in epoch_loader:
            scores = score_grid(model(**batch["inputs"]), batch)
            loss = loss_fn(scores, batch["mask"])
            accelerator.backward(loss)
            if cfg.max_grad_norm > 0:
                accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            step_in_epoch += 1
            last_loss = loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.4f}", epoch=epoch)
            log_and_checkpoint(accelerator, cfg, log_path, output_dir, step, epoch, step_in_epoch, total_steps,
                               {"loss": last_loss, "lr": scheduler.get_last_lr()[0]})
            if step >= total_steps:
                break
        else:
            epoch, skip = epoch + 1, 0
            continue
        break
    bar.close()
    train_seconds = time.time() - started

    state_dict = final_state_dict(accelerator, model)
    unwrapped = accelerator.unwrap_model(model)
    model_dir = output_dir / "model"
    if accelerator.is_main_process:
        save_reranker(unwrapped, model_dir, state_dict=state_dict)
        write_training_config(cfg, model_dir)
        metrics = {}
        if cfg.eval_beir_dir:
            from trainers.embedder.model import resolve_model_path
            from trainers.evaluate import evaluate_reranker

            metrics = evaluate_reranker(str(model_dir), cfg.eval_beir_dir, resolve_model_path(cfg.eval_first_stage),
                                        cfg.eval_top_k, cfg.eval_split, batch_size=cfg.eval_batch_size)
            accelerator.print(json.dumps({"eval": metrics}))
        summary = {"steps": step, "epochs_completed": epoch, "final_loss": last_loss,
                   "train_seconds": round(train_seconds, 1), "num_processes": accelerator.num_processes,
                   "hardware": hardware(accelerator), "metrics": metrics}
        (output_dir / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        write_card(cfg, model_dir, loss_fn, summary)
        if cfg.push_to:  # trainers.publish (hub helper): one commit, optional version tag
            from trainers.publish import push_model

            push_model(model_dir, cfg.push_to, version=cfg.push_version)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return model_dir


def write_card(cfg: RerankerConfig, model_dir: Path, loss_fn, summary: dict) -> None:
    from cards.model_card import ModelCardInfo, write_model_card

    metrics = summary["metrics"]
    write_model_card(model_dir, ModelCardInfo(
        kind=cfg.kind,
        base_model=cfg.model,
        dataset=cfg.dataset,
        dataset_config=cfg.dataset_config,
        dataset_revision=cfg.dataset_revision,
        loss=loss_fn.name,
        loss_config=loss_fn.config,
        loss_citation=loss_fn.citation,
        hyperparameters=to_dict(cfg),
        hardware=summary["hardware"],
        train_seconds=summary["train_seconds"],
        metrics=metrics,
        eval_dataset=cfg.eval_beir_dir,
        license=cfg.license,
        head=cfg.head if cfg.kind == "llm_reranker" else None,
    ))
