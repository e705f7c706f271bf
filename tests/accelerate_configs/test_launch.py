"""Every shipped accelerate config launches ``trainers/train.py`` with the tiny MiniLM config on CPU.

- ``cpu.yaml``: launched end to end by ``tests/trainers/test_train_minilm.py``; ``single_gpu.yaml`` (forced
  to CPU with ``--cpu``, slow tier): one process;
- ``multi_gpu.yaml``: DDP with two CPU processes (gloo backend, ``ACCELERATE_USE_CPU=1``), with the
  tiny reranker recipe and with the tiny embedder recipe;
- ``deepspeed_zero2.yaml`` / ``deepspeed_zero3.yaml``: ONE process on CPU (ZeRO-3 with the tiny reranker
  recipe by default, ZeRO-2 and ZeRO-3 with the embedder recipe in the slow tier) (with two CPU processes
  accelerate mis-counts the world size, see docs/ENVIRONMENT.md; multi-process DeepSpeed is for
  the GPU machine). DeepSpeed's ops JIT-compile once into ``TORCH_EXTENSIONS_DIR`` (default
  ``~/.cache/hardneg/torch_extensions``), ~1 min the first time.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "accelerate_configs"
ACCELERATE = Path(sys.executable).with_name("accelerate")
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
needs_deepspeed = pytest.mark.skipif(
    not HAS_DEEPSPEED, reason="deepspeed is not installed (DS_BUILD_OPS=0 pip install deepspeed)"
)


EMBEDDER = ("minilm-cpu.yaml", "--passage_max_len", "32")  # T1's tiny embedder recipe
RERANKER = ("minilm-cross-encoder-cpu.yaml", "--max_length", "32")


def launch(config: str, tmp_path: Path, *extra: str, recipe=EMBEDDER, env_extra=None, train_extra=()) -> Path:
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               TORCH_EXTENSIONS_DIR=os.environ.get(
                   "TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "hardneg" / "torch_extensions")),
               **(env_extra or {}))
    cmd = [str(ACCELERATE), "launch", "--config_file", str(CONFIGS / config), *extra,
           str(REPO / "trainers" / "train.py"), str(REPO / "trainers" / "configs" / recipe[0]), *recipe[1:],
           "--max_steps", "2", "--per_device_train_batch_size", "2", "--group_size", "3",
           "--max_rows", "8", "--eval_beir_dir", "none", "--output_dir", str(out), *train_extra]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-6000:]}"
    return out


def check_run(out: Path, processes: int, recipe=EMBEDDER) -> None:
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 2 and summary["num_processes"] == processes
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2]
    # linear decay over the 2 optimizer steps, whatever the process count (half-way, then 0)
    lr = json.loads((out / "train_config.json").read_text())["learning_rate"]
    assert log[0]["lr"] == pytest.approx(lr / 2) and log[1]["lr"] == 0
    assert (out / "model" / "README.md").is_file()
    if recipe is RERANKER:
        from sentence_transformers import CrossEncoder

        scores = CrossEncoder(str(out / "model"), device="cpu").predict([("a query", "a passage")])
        assert len(scores) == 1 and 0.0 < float(scores[0]) < 1.0
        return
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(out / "model"), device="cpu")
    emb = model.encode(["a sentence", "another one"], convert_to_tensor=True)
    assert emb.shape == (2, 384) and bool(emb.isfinite().all())


def test_configs_are_consistent():
    for name in ("cpu", "single_gpu", "multi_gpu", "deepspeed_zero2", "deepspeed_zero3"):
        cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        assert cfg["compute_environment"] == "LOCAL_MACHINE"
        if name.startswith("deepspeed"):
            ds_file = cfg["deepspeed_config"]["deepspeed_config_file"]
            ds = json.loads((REPO / ds_file).read_text())
            assert ds["zero_optimization"]["stage"] == int(name[-1])
            assert ds["train_micro_batch_size_per_gpu"] == "auto"  # filled from the trainer's per_device_train_batch_size
            assert "mixed_precision" not in cfg  # comes from the trainer (bf16) through "auto"


# cpu.yaml is launched end to end (train, evaluate, save, reload) by
# tests/trainers/test_train_minilm.py::test_accelerate_launch_trains_evaluates_and_writes_model_and_card;
# a second launch here only repeated it. The check below keeps the file in this suite's view.
def test_cpu_config_is_one_cpu_process():
    cfg = yaml.safe_load((CONFIGS / "cpu.yaml").read_text())
    assert cfg["use_cpu"] is True and cfg["num_processes"] == 1 and cfg["distributed_type"] == "NO"


def test_multi_process_on_cpu_without_cpu_mode_fails_clearly(tmp_path):
    """Without ACCELERATE_USE_CPU each of the 2 processes would train alone: train.py refuses."""
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    cmd = [str(ACCELERATE), "launch", "--config_file", str(CONFIGS / "multi_gpu.yaml"), "--num_processes", "2",
           str(REPO / "trainers" / "train.py"), str(REPO / "trainers" / "configs" / EMBEDDER[0]),
           "--output_dir", str(tmp_path / "run")]
    proc = subprocess.run(cmd, cwd=REPO, env=dict(env, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "no CUDA device" in proc.stderr and "--cpu" in proc.stderr
    assert not (tmp_path / "run" / "model").exists()


@pytest.mark.slow  # same path as cpu.yaml once forced to CPU; run with -m slow
def test_single_gpu_config_forced_to_cpu(tmp_path):
    check_run(launch("single_gpu.yaml", tmp_path, "--cpu"), processes=1)


# accelerate starts DDP processes through torchrun; without CUDA they only form a gloo (MULTI_CPU)
# group when ACCELERATE_USE_CPU is set, otherwise each process silently trains alone.
DDP_ON_CPU = {"ACCELERATE_USE_CPU": "1"}


def test_multi_gpu_config_ddp_two_cpu_processes_reranker(tmp_path):
    out = launch("multi_gpu.yaml", tmp_path, "--num_processes", "2", recipe=RERANKER, env_extra=DDP_ON_CPU)
    check_run(out, processes=2, recipe=RERANKER)


# needs the embedder trainer's one-forward-per-step + find_unused_parameters DDP fix (T1)
def test_multi_gpu_config_ddp_two_cpu_processes_embedder(tmp_path):
    check_run(launch("multi_gpu.yaml", tmp_path, "--num_processes", "2", env_extra=DDP_ON_CPU), processes=2)


@needs_deepspeed
@pytest.mark.slow  # the default tier runs DeepSpeed through ZeRO-3 below; run with -m slow
def test_deepspeed_zero2_one_cpu_process_embedder(tmp_path):
    check_run(launch("deepspeed_zero2.yaml", tmp_path, "--num_processes", "1"), processes=1)


@needs_deepspeed
def test_deepspeed_zero3_one_cpu_process_reranker(tmp_path):
    """ZeRO-3 partitions the weights: the saved model must hold the gathered (full) tensors."""
    from safetensors.torch import load_file

    out = launch("deepspeed_zero3.yaml", tmp_path, "--num_processes", "1", recipe=RERANKER)
    weights = load_file(out / "model" / "model.safetensors")
    assert weights["classifier.weight"].shape == (1, 384)
    assert all(t.numel() > 0 for t in weights.values())
    check_run(out, processes=1, recipe=RERANKER)


@needs_deepspeed
@pytest.mark.slow
def test_deepspeed_zero3_one_cpu_process_embedder(tmp_path):
    """zero3_init_flag: the evaluation after training reloads the saved model with from_pretrained, which
    loads partitioned (empty) weights unless the trainer left HF's DeepSpeed mode (unset_hf_deepspeed_config)."""
    out = launch("deepspeed_zero3.yaml", tmp_path, "--num_processes", "1",
                 train_extra=("--eval_beir_dir", str(REPO / "tests" / "fixtures" / "beir-small")))
    check_run(out, processes=1)
    metrics = json.loads((out / "train_summary.json").read_text())["metrics"]
    assert metrics["ndcg@10"] > 0.1  # base MiniLM after 2 tiny steps; empty weights would score ~0
