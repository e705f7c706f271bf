"""Training throughput: hardneg's embedder trainer vs sentence-transformers, same setting.

    python bench/train_throughput.py                       # CPU default: bundled MiniLM, small batch
    python bench/train_throughput.py --model intfloat/e5-base-unsupervised --bf16 \
        --batch-size 128 --group-size 8 --max-len 350 --steps 30 --warmup-steps 5   # E5-base GPU setting
    python bench/train_throughput.py --random-init bert-base ...   # E5-base-sized random BERT (offline GPU box)

Runs, each in its own process (so peak memory is measured cleanly):
  ours      - ``trainers.embedder.trainer.train`` (the shared loop of ``trainers.trainer``; InfoNCE over
              in-batch + hard negatives)
  ours+gc   - the same with GradCache (``--gc-chunk`` texts per chunk)
  st        - sentence-transformers ``SentenceTransformerTrainer`` + ``MultipleNegativesRankingLoss``
              (anchor, positive, k negative columns; scale = 1 / temperature)
with the same model, batch size (queries per step), group size (1 positive + k negatives), max
length and steps. Throughput is queries/s over the steps after ``--warmup-steps``. Peak memory
is CUDA max-allocated on a GPU, peak RSS of the process on CPU. Prints a table and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FIXTURES = sorted((ROOT / "tests" / "fixtures" / "rlhn").glob("*.stage_1.*.jsonl"))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--random-init", choices=["bert-base"], default=None,
                    help="use a randomly initialised BERT-base (E5-base's architecture) with the MiniLM tokenizer")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup-steps", type=int, default=2)
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--gc-chunk", type=int, default=16, help="GradCache chunk size (texts)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per run (0 = torch default)")
    ap.add_argument("--runs", default="ours,ours+gc,st")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat the runs this many times, alternating, and report medians (noisy machines)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def prepare(args, workdir: Path) -> tuple[str, Path]:
    """Model folder and a jsonl of rows with at least k negatives, repeated to fill the steps."""
    from trainers.embedder.model import resolve_model_path

    model = resolve_model_path(args.model)
    if args.random_init:
        import torch
        from transformers import AutoTokenizer, BertConfig, BertModel

        torch.manual_seed(0)
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
        BertModel(BertConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=512)).save_pretrained(workdir / "m")
        tokenizer.save_pretrained(workdir / "m")
        model = str(workdir / "m")
    k = args.group_size - 1
    rows = [json.loads(line) for f in FIXTURES for line in f.read_text().splitlines()]
    rows = [r for r in rows if len(r["negative_passages"]) >= k]
    need = args.batch_size * args.steps
    data = workdir / "rows.jsonl"
    with data.open("w") as out:
        for i in range(need):
            r = rows[i % len(rows)]
            out.write(json.dumps({c: r[c] for c in ("query_id", "query", "positive_passages",
                                                    "negative_passages", "subset")}) + "\n")
    return model, data


def peak_memory_gib() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def queries_per_second(step_seconds: list[float], batch: int, warmup: int) -> float:
    """``step_seconds[i]`` = wall time at the end of step i+1 (since the loop started)."""
    timed = len(step_seconds) - warmup
    return batch * timed / (step_seconds[-1] - step_seconds[warmup - 1]) if warmup else batch * timed / step_seconds[-1]


def run_ours(args, model: str, data: Path, workdir: Path, gradcache: bool) -> dict:
    from trainers.embedder.config import EmbedderConfig
    from trainers.embedder.trainer import train

    out = workdir / ("ours-gc" if gradcache else "ours")
    shutil.rmtree(out, ignore_errors=True)  # a fresh run each round: never a resume of the last one
    cfg = EmbedderConfig(model=model, pooling="mean", normalize=True, query_max_len=args.max_len,
                         passage_max_len=args.max_len, temperature=args.temperature, group_size=args.group_size,
                         per_device_train_batch_size=args.batch_size, learning_rate=2e-5, max_steps=args.steps,
                         bf16=args.bf16,
                         gradcache=gradcache, gradcache_chunk_size=args.gc_chunk, dataset=str(data),
                         output_dir=str(out), logging_steps=1, eval_beir_dir=None)
    train(cfg)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return {"queries_per_s": queries_per_second([e["seconds"] for e in log], args.batch_size, args.warmup_steps),
            "final_loss": log[-1]["loss"]}


def run_st(args, model: str, data: Path, workdir: Path) -> dict:
    import datasets
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    from trainers.embedder.config import EmbedderConfig
    from trainers.embedder.model import Embedder

    # the same starting point as ours: our Embedder's save of the base model (mean pooling, normalise)
    st_dir = workdir / "st-base"
    emb = Embedder.from_config(EmbedderConfig(model=model, pooling="mean", normalize=True, query_max_len=args.max_len,
                                              passage_max_len=args.max_len))
    emb.save(st_dir)
    st = SentenceTransformer(str(st_dir), device="cuda" if _cuda() else "cpu")
    st.max_seq_length = args.max_len
    k = args.group_size - 1
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    columns = {"anchor": [r["query"] for r in rows], "positive": [r["positive_passages"][0]["text"] for r in rows]}
    for j in range(k):
        columns[f"negative_{j + 1}"] = [r["negative_passages"][j]["text"] for r in rows]
    train_set = datasets.Dataset.from_dict(columns)
    stamps: list[float] = []

    class StepTimer(TrainerCallback):
        def on_train_begin(self, *a, **kw):
            stamps.append(time.time())

        def on_step_end(self, *a, **kw):
            if _cuda():
                import torch

                torch.cuda.synchronize()
            stamps.append(time.time())

    targs = SentenceTransformerTrainingArguments(
        output_dir=str(workdir / "st"), per_device_train_batch_size=args.batch_size, max_steps=args.steps,
        learning_rate=2e-5, bf16=args.bf16, save_strategy="no", report_to=[], logging_steps=1,
        dataloader_drop_last=True, seed=42, disable_tqdm=True, use_cpu=not _cuda())
    trainer = SentenceTransformerTrainer(model=st, args=targs, train_dataset=train_set,
                                         loss=MultipleNegativesRankingLoss(st, scale=1.0 / args.temperature),
                                         callbacks=[StepTimer()])
    trainer.train()
    seconds = [t - stamps[0] for t in stamps[1:]]
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {"queries_per_s": queries_per_second(seconds, args.batch_size, args.warmup_steps),
            "final_loss": losses[-1] if losses else None}


def median_run(runs: list[dict]) -> dict:
    ordered = sorted(runs, key=lambda r: r["queries_per_s"])
    out = dict(ordered[(len(ordered) - 1) // 2])  # lower median: conservative for even counts
    out["all_queries_per_s"] = [round(r["queries_per_s"], 4) for r in runs]
    return out


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def worker(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    workdir = Path(args.workdir)
    model, data = json.loads((workdir / "prepared.json").read_text()).values()
    data = Path(data)
    if args.worker == "st":
        result = run_st(args, model, data, workdir)
    else:
        result = run_ours(args, model, data, workdir, gradcache=args.worker == "ours+gc")
    result["peak_memory_gib"] = round(peak_memory_gib(), 3)
    print("RESULT " + json.dumps(result), flush=True)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return {}
    if args.steps <= args.warmup_steps:
        raise SystemExit("--steps must be larger than --warmup-steps")
    with tempfile.TemporaryDirectory(prefix="hardneg-bench-") as tmp:
        workdir = Path(tmp)
        model, data = prepare(args, workdir)
        (workdir / "prepared.json").write_text(json.dumps({"model": model, "data": str(data)}))
        all_runs: dict[str, list[dict]] = {}
        passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
        env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
        names = args.runs.split(",")
        for round_ in range(args.rounds):
            for name in names if round_ % 2 == 0 else names[::-1]:
                cmd = [sys.executable, __file__, *passthrough, "--worker", name, "--workdir", str(workdir)]
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
                if proc.returncode != 0 or not lines:
                    raise SystemExit(f"run {name} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
                result = json.loads(lines[-1][len("RESULT "):])
                all_runs.setdefault(name, []).append(result)
                print(f"{name:8s} {result['queries_per_s']:9.3f} queries/s   peak memory "
                      f"{result['peak_memory_gib']:.3f} GiB   loss {result['final_loss']}", flush=True)
        results = {name: median_run(runs) for name, runs in all_runs.items()}
    summary = {"setting": {k: v for k, v in vars(args).items() if k not in ("worker", "workdir")}, "runs": results}
    if "ours" in results and "st" in results:
        summary["ratio_ours_over_st"] = round(results["ours"]["queries_per_s"] / results["st"]["queries_per_s"], 3)
        print(f"ratio ours / sentence-transformers: {summary['ratio_ours_over_st']:.3f} (goal >= 1.0)")
    if "ours" in results and "ours+gc" in results:
        print(f"peak memory without / with GradCache: {results['ours']['peak_memory_gib']:.3f} / "
              f"{results['ours+gc']['peak_memory_gib']:.3f} GiB")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
