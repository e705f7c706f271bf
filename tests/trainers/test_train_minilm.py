import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoTokenizer, BertConfig, BertModel

import trainers.embedder.trainer as embedder_trainer
import trainers.trainer as loop
from tests.trainers.refined_data import fixture_rows, write_refined
from trainers.config_io import load_config
from trainers.embedder.config import EmbedderConfig
from trainers.embedder.model import Embedder, resolve_model_path

ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["how are dividends taxed", "Form 1099-B is furnished by brokerages to recipients."]
SMALL = ["--max_steps", "2", "--per_device_train_batch_size", "2", "--group_size", "3", "--query_max_len", "16",
         "--passage_max_len", "32"]


@pytest.fixture(scope="module")
def refined(tmp_path_factory):
    rows = fixture_rows(10, passage_chars=200)
    rows[2] = dict(rows[2], negative_passages=[])  # a row hn_remove emptied
    return write_refined(tmp_path_factory.mktemp("refined"), {"rlhn": rows})


def test_accelerate_launch_trains_evaluates_and_writes_model_and_card(refined, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    # the one end-to-end launch of accelerate_configs/cpu.yaml (tests/accelerate_configs covers the others)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "accelerate_configs/cpu.yaml",
           "--num_cpu_threads_per_process", "1", "trainers/train.py", "trainers/configs/minilm-cpu.yaml", "--dataset", str(refined),
           "--dataset_config", "rlhn", "--output_dir", str(out), "--eval_beir_dir", "tests/fixtures/beir-small",
           *SMALL]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model_dir = out / "model"
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 2 and summary["num_processes"] == 1 and 0.0 <= summary["metrics"]["ndcg@10"] <= 1.0
    assert summary["epochs"] == 0.4  # 2 of the 5 steps an epoch of 10 rows at batch 2 takes (a float, as HF logs it)
    assert (model_dir / "training_config.yaml").is_file()
    card = (model_dir / "README.md").read_text()
    assert "InfoNCE" in card and "ndcg@10" in card.lower() and "sentence-transformers/all-MiniLM-L6-v2" in card

    st = SentenceTransformer(str(model_dir), device="cpu")
    ours = Embedder.load(model_dir).eval()
    assert (ours.embed_queries(TEXTS) - st.encode_query(TEXTS, convert_to_tensor=True).cpu()).abs().max() < 1e-5
    assert (ours.embed_passages(TEXTS) - st.encode_document(TEXTS, convert_to_tensor=True).cpu()).abs().max() < 1e-5
    base = SentenceTransformer(resolve_model_path("minilm"), device="cpu")
    assert (base.encode(TEXTS, convert_to_tensor=True) - st.encode(TEXTS, convert_to_tensor=True)).abs().max() > 1e-5


def test_bad_override_is_a_clear_error(refined):
    proc = subprocess.run([sys.executable, "trainers/train.py", "trainers/configs/minilm-cpu.yaml", "--lerning_rate", "1"],
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=""), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--lerning_rate" in proc.stderr and "accepted keys" in proc.stderr


class Crash(RuntimeError):
    pass


def tiny_bert_with_minilm_tokenizer(path: Path) -> Path:
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def uninterrupted(refined, tmp_path_factory):
    """One uninterrupted 7-step run (10 rows, batch 2: epoch 0 = steps 1-5, epoch 1 = steps 6-7)."""
    root = tmp_path_factory.mktemp("resume")
    model = tiny_bert_with_minilm_tokenizer(root / "tiny")
    return model, embedder_trainer.train(resume_cfg(model, refined, root / "whole", save_steps=0))


def resume_cfg(model: Path, refined: Path, out: Path, save_steps: int, *extra: str) -> EmbedderConfig:
    return load_config(EmbedderConfig, ROOT / "trainers/configs/minilm-cpu.yaml",
                       ["--model", str(model), "--learning_rate", "1e-3",
                        "--dataset", str(refined), "--dataset_config", "rlhn", "--output_dir", str(out),
                        "--eval_beir_dir", "none", "--max_steps", "7", "--save_steps", str(save_steps),
                        "--per_device_train_batch_size", "2", "--group_size", "2", "--query_max_len", "12", "--passage_max_len", "24",
                        *extra])


def crash_after_first_checkpoint(monkeypatch, cfg) -> None:
    """Train ``cfg`` until its first checkpoint is saved, then die there (a simulated preemption)."""
    real_save = loop.save_checkpoint

    def save_then_crash(*args, **kwargs):
        real_save(*args, **kwargs)
        raise Crash("simulated preemption after the first checkpoint")

    monkeypatch.setattr(loop, "save_checkpoint", save_then_crash)
    with pytest.raises(Crash):
        embedder_trainer.train(cfg)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)


# save_steps 5: the checkpoint is the end of epoch 0 (resume starts epoch 1 on a fresh loader);
# save_steps 6: the checkpoint is inside epoch 1 (resume skips one batch of epoch 1). Both failed
# when the trainer set the dataset's epoch itself: accelerate's loader reset it to its own pass
# counter (0 after a restart), so the resumed run trained on epoch 0's negatives again.
@pytest.mark.parametrize("save_steps", [5, 6], ids=["epoch-boundary", "inside-epoch-1"])
def test_resume_from_last_checkpoint_matches_uninterrupted_run(refined, uninterrupted, tmp_path, monkeypatch,
                                                               save_steps):
    # dropout on: the resumed run must replay the RNG stream too, not only weights/optimizer/data
    model, whole = uninterrupted

    def cfg(out):
        return resume_cfg(model, refined, out, save_steps)


    crash_after_first_checkpoint(monkeypatch, cfg(tmp_path / "resumed"))
    assert (tmp_path / "resumed" / "checkpoints" / f"step-{save_steps}").is_dir()
    resumed = embedder_trainer.train(cfg(tmp_path / "resumed"))

    def losses(run):
        return {e["step"]: e["loss"] for e in map(json.loads, (run / "train_log.jsonl").read_text().splitlines())}

    whole_losses, resumed_losses = losses(whole.parent), losses(tmp_path / "resumed")
    assert sorted(whole_losses) == sorted(resumed_losses) == list(range(1, 8))
    assert whole_losses == pytest.approx(resumed_losses, abs=1e-6)
    epochs = {e["step"]: e["epoch"] for e in map(json.loads, (tmp_path / "resumed" / "train_log.jsonl").read_text().splitlines())}
    assert epochs[6] == epochs[7] == 1
    a, b = Embedder.load(whole).model.state_dict(), Embedder.load(resumed).model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_resume_with_gradient_accumulation_matches_uninterrupted_run(refined, uninterrupted, tmp_path, monkeypatch):
    """5 micro-batches per epoch, 2 per optimizer step: steps 1-3 in epoch 0 (the last one a single micro-batch,
    stepped at the end of the epoch), 4-5 in epoch 1. The checkpoint at step 2 is 4 micro-batches into epoch 0."""
    model, _ = uninterrupted
    extra = ("--gradient_accumulation_steps", "2", "--max_steps", "5")
    whole = embedder_trainer.train(resume_cfg(model, refined, tmp_path / "whole", 0, *extra))
    crash_after_first_checkpoint(monkeypatch, resume_cfg(model, refined, tmp_path / "resumed", 2, *extra))
    state = json.loads((tmp_path / "resumed" / "checkpoints" / "step-2" / loop.STATE_FILE).read_text())
    assert state == {"step": 2, "epoch": 0, "step_in_epoch": 4}
    resumed = embedder_trainer.train(resume_cfg(model, refined, tmp_path / "resumed", 2, *extra))

    def log(run):
        return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]

    assert [(e["step"], e["epoch"]) for e in log(whole.parent)] == [(1, 0), (2, 0), (3, 0), (4, 1), (5, 1)]
    assert [e["loss"] for e in log(tmp_path / "resumed")] == pytest.approx([e["loss"] for e in log(whole.parent)],
                                                                             abs=1e-6)
    a, b = Embedder.load(whole).model.state_dict(), Embedder.load(resumed).model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.parametrize("mode,gradcache", [("cmp", True), ("amp", False)])
def test_multi_positive_training_paths(tmp_path, mode, gradcache):
    from tests.trainers.refined_data import multi_positive_rows

    data = write_refined(tmp_path / "data", {"clear": multi_positive_rows(6)})
    model = tiny_bert_with_minilm_tokenizer(tmp_path / "tiny")
    cfg = load_config(EmbedderConfig, ROOT / "trainers/configs/minilm-cpu.yaml",
                      ["--model", str(model), "--dataset", str(data), "--dataset_config", "clear",
                       "--output_dir", str(tmp_path / "run"), "--eval_beir_dir", "none", "--max_steps", "2",
                       "--per_device_train_batch_size", "3", "--group_size", "3", "--multi_positive", mode, "--max_positives", "3",
                       "--gradcache", str(gradcache).lower(), "--gradcache_chunk_size", "4",
                       "--query_max_len", "12", "--passage_max_len", "24"])
    model_dir = embedder_trainer.train(cfg)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(0 < e["loss"] < 50 for e in log)
    card = (model_dir / "README.md").read_text()
    assert {"cmp": "CMP", "amp": "AMP"}[mode] in card and ("Gao" in card) == gradcache
