"""Worker of test_gather: one of two gloo processes, each holding half of a batch."""

from __future__ import annotations

import json
import os

import torch
import torch.distributed as dist

from tests.trainers.tiny_models import random_batch, tiny_bert_embedder
from trainers.embedder.trainer import scatter_passages
from trainers.losses import AMP, InfoNCE

QUERIES, SLOTS = 6, 3
DROP = (4, 10)  # two empty negative slots (rows with fewer negatives)


def shard(batch: dict, rank: int, world: int) -> dict:
    per = QUERIES // world
    q_rows = slice(rank * per, (rank + 1) * per)
    lo, hi = rank * per * SLOTS, (rank + 1) * per * SLOTS
    keep = (batch["slot_index"] >= lo) & (batch["slot_index"] < hi)
    return {
        "query": {k: v[q_rows] for k, v in batch["query"].items()},
        "passage": {k: v[keep] for k, v in batch["passage"].items()},
        "slot_index": batch["slot_index"][keep] - lo,
        "slot_mask": batch["slot_mask"][lo:hi],
        "pos_mask": batch["pos_mask"][q_rows],
        "pos_scores": batch["pos_scores"][q_rows],
    }


def loss_and_grads(model, batch, loss_fn, scale: float):
    model.zero_grad()
    q = model.encode(batch["query"])
    p = scatter_passages(model.encode(batch["passage"]), batch)
    loss = loss_fn(q, p, batch)
    (loss * scale).backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def run(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        results = {}
        for loss_cls in (InfoNCE, AMP):
            model = tiny_bert_embedder(seed=0, dropout=0.0).eval()
            full = random_batch(QUERIES, SLOTS, seed=7, drop_slots=DROP)
            # reference: one process, whole batch, no gathering
            ref_loss, ref_grads = loss_and_grads(model, full, loss_cls(0.05, gather_across_processes=False), 1.0)
            # distributed: local half, gathered negatives, loss * world, then DDP's gradient average
            loss, grads = loss_and_grads(model, shard(full, rank, world), loss_cls(0.05, True), float(world))
            for g in grads.values():
                dist.all_reduce(g)
                g /= world
            results[loss_cls.__name__] = {
                "loss": loss.item(), "ref_loss": ref_loss.item(),
                "max_grad_diff": max((grads[n] - ref_grads[n]).abs().max().item() for n in ref_grads),
                "max_grad": max(g.abs().max().item() for g in ref_grads.values()),
                "same_keys": sorted(grads) == sorted(ref_grads),
            }
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(results, f)
    finally:
        dist.destroy_process_group()
