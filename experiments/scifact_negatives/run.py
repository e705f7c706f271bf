"""Build -> train -> evaluate every training-set variant, then write the table and the plot.

    python -m experiments.scifact_negatives [--quick] [--seeds 3] [--judges ENDPOINTS.yaml] [--out DIR]

Each step is the command a user runs, as a subprocess: ``python -m builders.cli <recipe>`` for the
PercPos and judged builds, ``python trainers/train.py experiments/scifact_negatives/train.yaml ...`` for
every (variant, seed) (it evaluates on the TEST split with ``trainers.evaluate`` after training),
``python -m trainers.evaluate`` for the base model and ``python -m builders.agreement`` for each method
against the known false negatives. The mining runs in this process (``mine.py``). Judgments are kept in
SQLite stores under ``<out>/stores``: a rerun pays no judge call twice.

``--judges FILE`` points every judge stage of the judged recipes at the endpoints in FILE (a YAML/JSON list,
see README "Fleets"); without it the bundled SmolLM2-135M judges locally. ``--quick`` checks the machinery in
a few minutes (the first 120 train and 50 test queries over ~300 abstracts; 24 training rows, 2 judged rows, 1 seed, 2 steps); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from experiments.scifact_negatives import data, mine, report, variants

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RECIPES = HERE / "recipes"
VARIANTS = ("default", "oracle", "percpos", "rlhn", "arhn", "clear")
# each judged recipe's judge stages (what --judges replaces)
STAGES = {"rlhn": ("stage1",), "arhn": ("arhn_extract", "arhn_rank"), "clear": ("stage1",)}


@dataclass
class Settings:
    out: Path
    seeds: list[int]
    train_rows: int = 256
    judged_rows: int = 20
    arhn_rows: int = 6  # ARHN's snippet extraction is the slowest judge step on CPU: a subset of the judged rows
    negatives: int = 4
    max_length: int = 64  # mining tokens = the trained passage_max_len (the PercPos teacher reads 128: its recipe)
    mine_seed: int = 13
    max_steps: int | None = None  # None: one epoch (train.yaml)
    judges: str | None = None
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    results: Path | None = None  # results.md; None: <out>/results.md
    quick: bool = False


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([e["PYTHONPATH"]] if e.get("PYTHONPATH") else []))
    e.setdefault("HF_HUB_OFFLINE", "1")
    e.setdefault("TOKENIZERS_PARALLELISM", "false")
    return e


def run(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` from the repo root, output to ``log``; -> seconds. A failure raises with the log's tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print("$ " + " ".join(cmd), flush=True)
    start = time.time()
    with log.open("w", encoding="utf-8") as f:
        code = subprocess.call(cmd, cwd=ROOT, env=env(), stdout=f, stderr=subprocess.STDOUT)
    if code:
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-30:])
        raise RuntimeError(f"exit {code}: {' '.join(cmd)}\n(log {log})\n{tail}")
    return time.time() - start


def build(s: Settings, method: str, source: Path, timings: dict) -> tuple[Path, dict]:
    folder = s.out / "builds" / method
    store = s.out / "stores" / method / "judgments.sqlite"
    cmd = [sys.executable, "-m", "builders.cli", str(RECIPES / f"{method}.yaml"), "--no-progress",
           "--set", f"sources.0.path={source}", "--out", str(folder), "--set", f"output.store={store}"]
    if s.judges and method in STAGES:
        cmd += [a for stage in STAGES[method] for a in ("--set", f"judges.{stage}={Path(s.judges).resolve()}")]
    timings[f"build {method}"] = run(cmd, s.out / "logs" / f"build-{method}.log")
    return folder, json.loads((store.parent / "build_report.json").read_text(encoding="utf-8"))


def judge_answers(build_report: dict) -> int:
    """Judge answers the build used: calls made now + answers read from the store of an earlier run.
    ``judge_runs`` holds per stage one run's counters, or (RLHN) one per prompt version."""
    total = 0
    for runs in build_report.get("judge_runs", {}).values():
        for r in ([runs] if "calls" in runs else runs.values()):
            total += r.get("calls", 0) + r.get("cached", 0)
    return total


def agreement(s: Settings, folder: Path, config: str, labels: Path) -> dict:
    out = s.out / "agreement" / f"{config}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    run([sys.executable, "-m", "builders.agreement", "--human", str(labels), "--build", str(folder),
         "--method", config, "--json", str(out)], s.out / "logs" / f"agreement-{config}.log")
    return json.loads(out.read_text(encoding="utf-8"))


def base_model(s: Settings, timings: dict) -> dict:
    """The bundled MiniLM, no fine-tuning, evaluated at the trained models' max_seq_length."""
    from builders.embedding import default_model_path

    folder = s.out / "models" / "base"
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(default_model_path(), folder)
    cfg = folder / "sentence_bert_config.json"
    c = json.loads(cfg.read_text())
    c["max_seq_length"] = s.max_length
    cfg.write_text(json.dumps(c, indent=2))
    out = s.out / "metrics" / "base.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    timings["evaluate base"] = run([sys.executable, "-m", "trainers.evaluate", "--model", str(folder), "--beir",
                                    str(s.out / "beir"), "--split", "test", "--json-out", str(out)],
                                   s.out / "logs" / "evaluate-base.log")
    return json.loads(out.read_text())["embedder"]


def train(s: Settings, variant: str, dataset: Path, seed: int, timings: dict) -> dict:
    out = s.out / "models" / f"{variant}-s{seed}"
    if out.exists():
        shutil.rmtree(out)  # a finished run is not resumed: every variant trains from the base model
    cmd = [sys.executable, "trainers/train.py", str(HERE / "train.yaml"), "--dataset", str(dataset),
           "--seed", str(seed), "--output_dir", str(out), "--eval_beir_dir", str(s.out / "beir")]
    if s.max_steps:
        cmd += ["--max_steps", str(s.max_steps)]
    timings[f"train+evaluate {variant} seed {seed}"] = run(cmd, s.out / "logs" / f"train-{variant}-s{seed}.log")
    return json.loads((out / "train_summary.json").read_text())["metrics"]


def main_run(s: Settings) -> Path:
    start = time.time()
    load_before = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    timings: dict[str, float] = {}
    beir = data.unpack(s.out / "beir")
    if s.quick:
        data.shrink(beir, train_queries=120, test_queries=50, other_docs=100)
    t = time.time()
    mined = mine.mine(beir, s.negatives, s.mine_seed, s.max_length)
    timings["mine (in process)"] = time.time() - t
    docs = {str(d["_id"]): d for d in data.read_jsonl(beir / "corpus.jsonl")}
    rows = variants.training_rows(mined, s.train_rows, s.mine_seed)
    judged = variants.judged_rows(rows, s.judged_rows, s.mine_seed)
    judged_by = {m: judged for m in variants.JUDGED}
    judged_by["arhn"] = variants.judged_rows(judged, min(s.arhn_rows, len(judged)), s.mine_seed)
    rows_dir = s.out / "rows"
    default_rows = [mine.tevatron_row(r, docs) for r in rows]
    train_file = mine.write_jsonl(rows_dir / "train.jsonl", default_rows)
    labels_train = mine.write_labels(s.out / "labels" / "train.tsv", rows)
    judged_files, judged_labels = {}, {}
    for m, rs in judged_by.items():
        judged_files[m] = mine.write_jsonl(rows_dir / f"judged-{m}.jsonl", [mine.tevatron_row(r, docs) for r in rs])
        judged_labels[m] = mine.write_labels(s.out / "labels" / f"judged-{m}.tsv", rs)

    sets = {"default": default_rows, "oracle": [variants.oracle_row(r, docs) for r in rows]}
    info = {v: {"judge_answers": 0} for v in s.variants}
    agree: dict[str, dict] = {}
    for v in s.variants:
        if v not in variants.BUILT:
            continue
        method, config = variants.BUILT[v]
        judged_method = v in variants.JUDGED
        folder, rep = build(s, method, judged_files[v] if judged_method else train_file, timings)
        built = variants.read_config(folder, config)
        if judged_method:
            sets[v], replaced = variants.merge_judged(default_rows, built)
            info[v]["judged_rows"] = len(judged_by[v])
            info[v]["rows_replaced"] = replaced
        else:
            sets[v] = [variants.plain(r) for r in built]
        info[v]["judge_answers"] = judge_answers(rep)
        agree[v] = agreement(s, folder, config, judged_labels[v] if judged_method else labels_train)
        agree[v]["config"] = config
    files = {v: mine.write_jsonl(s.out / "train" / f"{v}.jsonl", sets[v]) for v in s.variants}

    metrics = {"base": [base_model(s, timings)]}
    for v in s.variants:
        metrics[v] = [train(s, v, files[v], seed, timings) for seed in s.seeds]
    fn_rows = [r for r in rows if r.false_negatives]
    facts = {
        "mined_rows": len(mined), "train_rows": len(rows), "judged_rows": len(judged),
        "held_out": sum(len(r.held_out) for r in mined), "known_fn_all": sum(len(r.false_negatives) for r in mined),
        "known_fn_train": sum(len(r.false_negatives) for r in rows), "fn_rows_train": len(fn_rows),
        "known_fn_judged": sum(len(r.false_negatives) for r in judged),
        "judged_fn_rows": sum(1 for r in judged if r.false_negatives),
        "arhn_rows": len(judged_by["arhn"]), "arhn_fn_rows": sum(1 for r in judged_by["arhn"] if r.false_negatives),
        "negatives": s.negatives, "max_length": s.max_length, "seeds": s.seeds, "quick": s.quick,
        "judges": s.judges or "local (bundled SmolLM2-135M-Instruct)", "corpus_docs": len(docs),
        "test_queries": len(data.read_qrels(beir / "qrels" / "test.tsv")),
        "max_steps": s.max_steps, "total_seconds": time.time() - start, "timings": timings,
        "load_before": load_before, "load_after": "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), "cores": os.cpu_count(),
    }
    counts = {v: {**variants.counts(sets[v]), **info[v]} for v in s.variants}
    results = s.results or (s.out / "results.md")
    raw = {"facts": facts, "counts": counts, "metrics": metrics, "agreement": agree}
    (s.out / "results.json").write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    report.write(results, raw, plot_path=results.with_name("ndcg_per_variant.png"))
    print(f"wrote {results} and {results.with_name('ndcg_per_variant.png')} in {facts['total_seconds'] / 60:.1f} min")
    return results


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m experiments.scifact_negatives", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="check the machinery in a few minutes (numbers mean nothing)")
    ap.add_argument("--seeds", type=int, default=None, help="training seeds 1..N (default 3; --quick: 1)")
    ap.add_argument("--judges", help="endpoints file (YAML/JSON list) for every judge stage; default: the local judge")
    ap.add_argument("--judged-rows", type=int, default=None, help="rows the LLM judges see (default 20; --quick: 2)")
    ap.add_argument("--arhn-rows", type=int, default=None, help="of those, the rows ARHN judges (default 6; --quick: 2)")
    ap.add_argument("--train-rows", type=int, default=None, help="training rows (default 256; --quick: 24)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}")
    ap.add_argument("--out", help="work folder (default runs/scifact_negatives; --quick: runs/scifact_negatives-quick)")
    ap.add_argument("--results", help="results.md path (default: experiments/scifact_negatives/results.md; "
                                      "--quick: <out>/results.md)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    quick = args.quick
    chosen = [v for v in args.variants.split(",") if v]
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    out = Path(args.out or ("runs/scifact_negatives-quick" if quick else "runs/scifact_negatives")).resolve()
    results = Path(args.results).resolve() if args.results else (None if quick else HERE / "results.md")
    s = Settings(out=out, seeds=list(range(1, (args.seeds or (1 if quick else 3)) + 1)),
                 train_rows=args.train_rows or (24 if quick else 256),
                 judged_rows=args.judged_rows or (2 if quick else 20), arhn_rows=args.arhn_rows or (2 if quick else 6),
                 max_steps=2 if quick else None, judges=args.judges, variants=chosen, results=results, quick=quick)
    out.mkdir(parents=True, exist_ok=True)
    main_run(s)
    return 0
