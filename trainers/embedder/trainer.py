"""Embedder training loop on accelerate: groups -> encoder -> InfoNCE/AMP/CMP -> save, eval, card, push.

Lean on purpose (Tevatron-style): one loop, DDP and DeepSpeed through ``accelerator.prepare``,
bf16 mixed precision when configured, GradCache when the batch does not fit. Checkpoints
(``accelerator.save_state``) go to ``<output_dir>/checkpoints/step-N`` every ``save_steps``; a
rerun with the same config resumes from the last one (same groups and batch order, because
both are functions of (seed, epoch, row)). The final model is a sentence-transformers folder
at ``<output_dir>/model``.
"""

from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from trainers.config_io import to_dict, write_training_config
from trainers.data import EmbedderCollator, TrainGroups, load_rows
from trainers.embedder.config import EmbedderConfig
from trainers.embedder.gradcache import CITATION as GRADCACHE_CITATION
from trainers.embedder.gradcache import gradcache_step
from trainers.embedder.model import Embedder, public_model_name
from trainers.losses import loss_for

STATE_FILE = "trainer_state.json"


def scatter_passages(p_real: torch.Tensor, batch: dict) -> torch.Tensor:
    """Encoded real passages -> the ``[batch * slots, d]`` grid the losses read (empty slots = 0)."""
    grid = p_real.new_zeros(batch["slot_mask"].shape[0], p_real.shape[1])
    return grid.index_copy(0, batch["slot_index"], p_real)


def last_checkpoint(output_dir: Path) -> Path | None:
    ckpts = [p for p in (output_dir / "checkpoints").glob("step-*") if (p / STATE_FILE).exists()]
    return max(ckpts, key=lambda p: int(p.name.split("-")[1]), default=None)


def final_state_dict(accelerator, model) -> dict | None:
    """After training: the full weights gathered from DeepSpeed (ZeRO-3 partitions them; keys
    without the wrapper's ``model.`` prefix), or None when the model holds them itself. Leaves
    transformers' ZeRO-3 init mode, which would make every later ``from_pretrained`` (the LoRA
    merge, the evaluation) load partitioned, empty weights."""
    accelerator.wait_for_everyone()
    if accelerator.distributed_type.value != "DEEPSPEED":
        return None
    state_dict = accelerator.get_state_dict(model)
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    if state_dict is None:  # on ranks other than the main one
        return None
    return {k.removeprefix("model."): v for k, v in state_dict.items()}


def log_and_checkpoint(accelerator, cfg, log_path: Path, output_dir: Path, step: int, epoch: int,
                       step_in_epoch: int, total_steps: int, values: dict) -> None:
    """After an optimizer step: a JSON log line every ``logging_steps`` (and at the last step),
    a checkpoint every ``save_steps`` (not at the last step: the model is saved then)."""
    if accelerator.is_main_process and (step % max(cfg.logging_steps, 1) == 0 or step == total_steps):
        with log_path.open("a") as log:
            log.write(json.dumps({"step": step, "epoch": epoch, **values}) + "\n")
    if cfg.save_steps > 0 and step % cfg.save_steps == 0 and step < total_steps:
        save_checkpoint(accelerator, output_dir, step, epoch, step_in_epoch)


def save_checkpoint(accelerator, output_dir: Path, step: int, epoch: int, step_in_epoch: int) -> None:
    path = output_dir / "checkpoints" / f"step-{step}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        (path / STATE_FILE).write_text(json.dumps({"step": step, "epoch": epoch, "step_in_epoch": step_in_epoch}))
    accelerator.wait_for_everyone()


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


def train(cfg: EmbedderConfig) -> Path:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed
    from transformers import get_linear_schedule_with_warmup

    # find_unused_parameters: encoders carry parameters pooling never reads (e.g. BERT's pooler)
    accelerator = Accelerator(mixed_precision="bf16" if cfg.bf16 else "no",
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    set_seed(cfg.seed)
    output_dir = Path(cfg.output_dir)
    started = time.time()

    embedder = Embedder.from_config(cfg)
    rows = load_rows(cfg.dataset, cfg.dataset_config, cfg.dataset_revision, cfg.dataset_split,
                     cfg.max_rows, need_scores=cfg.multi_positive == "cmp")
    groups = TrainGroups(rows, cfg.num_negatives, cfg.multi_positive, cfg.max_positives, cfg.seed)
    collator = EmbedderCollator(embedder.tokenizer, cfg.query_max_len, cfg.passage_max_len, cfg.num_negatives,
                                groups.max_positives, cfg.query_prefix, cfg.passage_prefix, cfg.use_row_prompt,
                                pad_to_multiple_of=8 if accelerator.device.type == "cuda" else None)
    # own generator: creating the iterator must not draw from the global RNG (dropout replays on resume)
    loader = torch.utils.data.DataLoader(groups, batch_size=cfg.batch_size, shuffle=False, collate_fn=collator,
                                         num_workers=cfg.num_workers, drop_last=False,
                                         generator=torch.Generator().manual_seed(cfg.seed))
    loss_fn = loss_for(cfg.multi_positive, cfg.temperature, cfg.gather_across_processes)
    params = [p for p in embedder.parameters() if p.requires_grad]
    # fused AdamW (one kernel for all parameters; CPU and CUDA), as transformers' Trainer uses by default
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)

    steps_per_epoch = math.ceil(len(groups) / (cfg.batch_size * accelerator.num_processes))
    total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.epochs * steps_per_epoch)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    # the scheduler stays unprepared: accelerate would step it once per process per step, while
    # total_steps here already counts optimizer steps; registered so checkpoints carry it
    model, optimizer, loader = accelerator.prepare(embedder, optimizer, loader)
    accelerator.register_for_checkpointing(scheduler)
    if cfg.gradcache and accelerator.distributed_type.value == "DEEPSPEED":
        raise ValueError("gradcache=true is not supported under DeepSpeed (its engine owns backward); "
                         "use DDP, or ZeRO with a smaller batch_size")

    step, epoch, skip = 0, 0, 0
    resume_from = last_checkpoint(output_dir)
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        state = json.loads((resume_from / STATE_FILE).read_text())
        step, epoch, skip = state["step"], state["epoch"], state["step_in_epoch"]
        accelerator.print(f"resuming from {resume_from} (step {step}, epoch {epoch})")

    gather_scale = float(accelerator.num_processes) if cfg.gather_across_processes else 1.0
    log_path = output_dir / "train_log.jsonl"
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "train_config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
    bar = tqdm(total=total_steps, initial=step, desc="train", disable=not accelerator.is_local_main_process,
               dynamic_ncols=True)
    model.train()
    last_loss = float("nan")
    loop_started = time.time()
    while step < total_steps:
        epoch_loader = accelerator.skip_first_batches(loader, skip) if skip else loader
        # accelerate's prepared loaders call dataset.set_epoch(<their own pass counter>) when iterated;
        # that counter restarts at 0 after a resume (and a fresh skip-loader counts from 0), so setting
        # the dataset's epoch directly is overwritten: give the loader the real epoch, which it passes
        # on to TrainGroups.set_epoch
        epoch_loader.set_epoch(epoch)
        step_in_epoch = skip
        for batch in epoch_loader:
            if cfg.gradcache:
                loss = gradcache_step(
                    lambda features: model(query=features)[0], [batch["query"], batch["passage"]],
                    lambda q, p, b=batch: loss_fn(q, scatter_passages(p, b), b),
                    cfg.gradcache_chunk_size, backward=accelerator.backward,
                    no_sync=lambda: accelerator.no_sync(model), loss_scale=gather_scale)
            else:
                q, p_real = model(query=batch["query"], passage=batch["passage"])
                loss = loss_fn(q, scatter_passages(p_real, batch), batch)
                accelerator.backward(loss * gather_scale)
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
                               {"loss": last_loss, "lr": scheduler.get_last_lr()[0],
                                "seconds": round(time.time() - loop_started, 4)})
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
        unwrapped.save(model_dir, merge=cfg.merge_on_save, state_dict=state_dict,
                       extra_prompts={subset: cfg.query_prefix + prompt  # the query text as trained
                                      for subset, prompt in dataset_prompts(rows, cfg.use_row_prompt).items()})
        write_training_config(cfg, model_dir)
        metrics = {}
        if cfg.eval_beir_dir and (model_dir / "modules.json").exists():
            from trainers.evaluate import evaluate_embedder

            metrics = evaluate_embedder(str(model_dir), cfg.eval_beir_dir, batch_size=cfg.eval_batch_size)
            accelerator.print(json.dumps({"eval": metrics}))
        summary = {"steps": step, "epochs_completed": epoch, "final_loss": last_loss,
                   "train_seconds": round(train_seconds, 1), "num_processes": accelerator.num_processes,
                   "hardware": hardware(accelerator), "metrics": metrics}
        if accelerator.device.type == "cuda":
            summary["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(accelerator.device) / 2**30, 3)
        (output_dir / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        write_card(cfg, model_dir, loss_fn, summary)
        if cfg.push_to:
            from trainers.publish import push_model

            push_model(model_dir, cfg.push_to, version=cfg.push_version)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return model_dir


def hardware(accelerator) -> str:
    if accelerator.device.type == "cuda":
        return f"{accelerator.num_processes} x {torch.cuda.get_device_name(accelerator.device)}"
    return f"{accelerator.num_processes} x CPU process ({platform.processor() or platform.machine()})"


def write_card(cfg: EmbedderConfig, model_dir: Path, loss_fn, summary: dict) -> None:
    """The model card (``cards.model_card``) next to the saved model."""
    from cards.model_card import ModelCardInfo, write_model_card

    write_model_card(model_dir, ModelCardInfo(
        kind="embedder",
        base_model=public_model_name(cfg.model),
        dataset=cfg.dataset,
        dataset_config=cfg.dataset_config,
        dataset_revision=cfg.dataset_revision,
        loss=loss_fn.name,
        loss_config=loss_fn.config,
        loss_citation=loss_fn.citation + ("\n" + GRADCACHE_CITATION if cfg.gradcache else ""),
        hyperparameters=to_dict(cfg),
        hardware=summary["hardware"],
        train_seconds=summary["train_seconds"],
        metrics=summary["metrics"],
        eval_dataset=cfg.eval_beir_dir,
        model_id=cfg.push_to,
    ))
