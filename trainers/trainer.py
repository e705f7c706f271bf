"""The one training loop, on accelerate, for embedders and rerankers alike.

A model kind subclasses :class:`Trainer` (``trainers/embedder/trainer.py``, ``trainers/reranker/trainer.py``)
and writes only what differs: :meth:`~Trainer.build` (the module, its training groups, its collator and
loss), :meth:`~Trainer.training_step` (forward, loss and backward of one micro-batch; the embedder runs
GradCache there), :meth:`~Trainer.save`, :meth:`~Trainer.evaluate` and :meth:`~Trainer.write_card`.
Everything else happens here, once:

- ``Accelerator`` with bf16 mixed precision, ``gradient_accumulation_steps`` (DeepSpeed's ``auto`` reads
  it) and DDP's ``find_unused_parameters`` (encoders carry parameters their pooling never reads, e.g.
  BERT's pooler; DDP tracks only trainable parameters, so LoRA runs pay for the adapters alone);
- AdamW, fused (one kernel for all parameters, CPU and CUDA, TrainingArguments' default
  ``adamw_torch_fused``) where torch has the kernel; no weight decay on biases and norm weights
  (transformers' rule); linear warmup and decay over optimizer steps; gradient clipping;
- gradient accumulation through ``accelerator.accumulate`` (no gradient sync until the last
  micro-batch; an epoch's last, shorter window still steps);
- a JSON line in ``<output_dir>/train_log.jsonl`` every ``logging_steps``; a checkpoint
  (``accelerator.save_state``: weights, optimizer, scheduler, RNG, accelerate's micro-step) under
  ``<output_dir>/checkpoints/step-N`` every ``save_steps``; a rerun with the same config resumes from
  the last one with the same groups, batch order and dropout draws, since all of them are functions of
  (seed, epoch, row) and the saved RNG state;
- at the end: the full weights gathered from DeepSpeed, the model at ``<output_dir>/model`` with its
  ``training_config.yaml``, the evaluation, ``train_summary.json``, the model card and the push.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from trainers.config import TrainingConfig
from trainers.config_io import to_dict, write_training_config

STATE_FILE = "trainer_state.json"
# transformers.Trainer.get_decay_parameter_names: parameters whose names match get no weight decay
NO_DECAY_PATTERNS = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]


def last_checkpoint(output_dir: Path) -> Path | None:
    ckpts = [p for p in (output_dir / "checkpoints").glob("step-*") if (p / STATE_FILE).exists()]
    return max(ckpts, key=lambda p: int(p.name.split("-")[1]), default=None)


def save_checkpoint(accelerator, output_dir: Path, step: int, epoch: int, batches_in_epoch: int) -> None:
    path = output_dir / "checkpoints" / f"step-{step}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:  # step_in_epoch: micro-batches of this epoch already trained on
        (path / STATE_FILE).write_text(json.dumps({"step": step, "epoch": epoch, "step_in_epoch": batches_in_epoch}))
    accelerator.wait_for_everyone()


def adamw(model: nn.Module, learning_rate: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, fused where torch has the kernel for them."""
    from transformers.trainer_pt_utils import get_parameter_names

    decay = set(get_parameter_names(model, [nn.LayerNorm], NO_DECAY_PATTERNS))
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in trainable if n in decay], "weight_decay": weight_decay},
              {"params": [p for n, p in trainable if n not in decay], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    try:
        return torch.optim.AdamW(groups, lr=learning_rate, fused=True)
    except RuntimeError:  # no fused kernel for these parameters' device or dtype: torch's default (foreach)
        return torch.optim.AdamW(groups, lr=learning_rate)


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


def hardware(accelerator) -> str:
    if accelerator.device.type == "cuda":
        return f"{accelerator.num_processes} x {torch.cuda.get_device_name(accelerator.device)}"
    return f"{accelerator.num_processes} x CPU process ({platform.processor() or platform.machine()})"


class Trainer:
    """The loop; subclasses give the model kind's build, step, save, evaluation and card."""

    def __init__(self, cfg: TrainingConfig):
        self.cfg = cfg
        self.loss: Callable | None = None  # set by build(); the card reads its name, config and citation

    # ---------------------------------------------------------------- what a model kind provides
    def build(self, accelerator) -> tuple[nn.Module, torch.utils.data.Dataset, Callable]:
        """The training module, its groups (a dataset with ``set_epoch``) and collator; sets ``self.loss``."""
        raise NotImplementedError

    def check(self, accelerator) -> None:
        """Refuse a setting the launch cannot run (called after ``accelerator.prepare``)."""

    def training_step(self, model, batch: dict, accelerator) -> torch.Tensor:
        """Forward, loss and ``accelerator.backward`` of one micro-batch; returns the loss, detached."""
        raise NotImplementedError

    def save(self, model: nn.Module, model_dir: Path, state_dict: dict | None) -> None:
        raise NotImplementedError

    def evaluate(self, model_dir: Path) -> dict:
        return {}

    def write_card(self, model_dir: Path, summary: dict) -> None:
        raise NotImplementedError

    # ---------------------------------------------------------------- the loop
    def train(self) -> Path:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, set_seed
        from transformers import get_linear_schedule_with_warmup

        cfg = self.cfg
        accelerator = Accelerator(mixed_precision="bf16" if cfg.bf16 else "no",
                                  gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                                  kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
        set_seed(cfg.seed)
        output_dir = Path(cfg.output_dir)
        started = time.time()

        module, groups, collate = self.build(accelerator)
        # own generator: creating the iterator must not draw from the global RNG (dropout replays on resume)
        loader = torch.utils.data.DataLoader(groups, batch_size=cfg.per_device_train_batch_size, shuffle=False,
                                             collate_fn=collate, num_workers=cfg.dataloader_num_workers,
                                             drop_last=False, generator=torch.Generator().manual_seed(cfg.seed))
        optimizer = adamw(module, cfg.learning_rate, cfg.weight_decay)
        batches_per_epoch = math.ceil(len(groups) / (cfg.per_device_train_batch_size * accelerator.num_processes))
        steps_per_epoch = math.ceil(batches_per_epoch / cfg.gradient_accumulation_steps)
        total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.num_train_epochs * steps_per_epoch)
        scheduler = get_linear_schedule_with_warmup(optimizer, cfg.warmup_for(total_steps), total_steps)
        # the scheduler stays unprepared: accelerate would step it once per process per step, while
        # total_steps here already counts optimizer steps; registered so checkpoints carry it
        model, optimizer, loader = accelerator.prepare(module, optimizer, loader)
        accelerator.register_for_checkpointing(scheduler)
        self.check(accelerator)
        params = [p for p in model.parameters() if p.requires_grad]

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
        last_loss, window = float("nan"), []
        loop_started = time.time()
        while step < total_steps:
            epoch_loader = accelerator.skip_first_batches(loader, skip) if skip else loader
            # accelerate's prepared loaders call dataset.set_epoch(<their own pass counter>) when iterated;
            # that counter restarts at 0 after a resume (and a fresh skip-loader counts from 0), so setting
            # the dataset's epoch directly is overwritten: give the loader the real epoch, which it passes
            # on to TrainGroups.set_epoch
            epoch_loader.set_epoch(epoch)
            batches = skip
            for batch in epoch_loader:
                with accelerator.accumulate(model):
                    window.append(self.training_step(model, batch, accelerator))
                    if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                    optimizer.step()  # accelerate skips it (and zero_grad) until the window's last micro-batch
                    optimizer.zero_grad()
                batches += 1
                if not accelerator.sync_gradients:
                    continue
                scheduler.step()
                step += 1
                last_loss, window = torch.stack(window).float().mean().item(), []
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.4f}", epoch=epoch)
                if accelerator.is_main_process and (step % max(cfg.logging_steps, 1) == 0 or step == total_steps):
                    with log_path.open("a") as log:
                        log.write(json.dumps({"step": step, "epoch": epoch, "loss": last_loss,
                                              "lr": scheduler.get_last_lr()[0],
                                              "seconds": round(time.time() - loop_started, 4)}) + "\n")
                if cfg.save_steps > 0 and step % cfg.save_steps == 0 and step < total_steps:
                    save_checkpoint(accelerator, output_dir, step, epoch, batches)
                if step >= total_steps:
                    break
            else:
                epoch, skip = epoch + 1, 0
                continue
            break
        bar.close()
        return self.finish(accelerator, model, output_dir, {
            "steps": step, "epochs": round(step / max(steps_per_epoch, 1), 3), "final_loss": last_loss,
            "train_seconds": round(time.time() - started, 1), "num_processes": accelerator.num_processes,
            "hardware": hardware(accelerator)})

    def finish(self, accelerator, model, output_dir: Path, summary: dict) -> Path:
        """Gather, save, write the training config, evaluate, summarise, card and push (main process)."""
        state_dict = final_state_dict(accelerator, model)
        model_dir = output_dir / "model"
        if accelerator.is_main_process:
            self.save(accelerator.unwrap_model(model), model_dir, state_dict)
            write_training_config(self.cfg, model_dir)
            summary["metrics"] = self.evaluate(model_dir)
            if summary["metrics"]:
                accelerator.print(json.dumps({"eval": summary["metrics"]}))
            if accelerator.device.type == "cuda":
                summary["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(accelerator.device) / 2**30, 3)
            (output_dir / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            self.write_card(model_dir, summary)
            if self.cfg.push_to:  # trainers.publish: one commit, optional version tag
                from trainers.publish import push_model

                push_model(model_dir, self.cfg.push_to, version=self.cfg.push_version)
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return model_dir
