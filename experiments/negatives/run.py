"""Build -> train -> evaluate every training-set variant of one dataset, then write the table and the plot.

    python -m experiments.negatives [--dataset nfcorpus|scifact] [--quick] [--seeds 3] [--judges ENDPOINTS.yaml]

Each step is the command a user runs, as a subprocess: ``python -m builders.cli <recipe>`` for the
PercPos and judged builds, ``python trainers/train.py <dataset>/train.yaml ...`` for every (variant, seed)
(it evaluates on the TEST split after training and writes each query's metrics), ``python -m trainers.evaluate``
for the base model and ``python -m builders.agreement`` for each method against the known false negatives.
The mining runs in this process (``mine.py``), the paired statistics too (``stats.py``). Judgments are kept in
SQLite stores under ``<out>/stores`` (a rerun pays no judge call twice) and a finished (variant, seed) run is
reused when its training rows, config and settings are unchanged (``run.stamp``): a killed run resumes.

``--judges FILE`` points every judge stage of the judged recipes at the endpoints in FILE (a YAML/JSON list,
see README "Fleets"); without it the bundled SmolLM2-135M judges locally. ``--quick`` checks the machinery in
a few minutes (a few train and test queries over a few hundred documents, 1 seed, 2 steps); its numbers mean
nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from experiments.negatives import datasets, mine, report, stats, variants
from experiments.negatives.datasets import DATASETS, Dataset

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RECIPES = HERE / "recipes"
VARIANTS = ("default", "oracle_remove", "oracle_relabel", "random_remove", "percpos", "random_percpos", "rlhn", "arhn", "clear")
# each judged recipe's judge stages (what --judges replaces)
STAGES = {"rlhn": ("stage1",), "arhn": ("arhn_extract", "arhn_rank"), "clear": ("stage1",)}


@dataclass
class Settings:
    dataset: Dataset
    out: Path
    seeds: list[int]
    train_rows: int | None
    judged_rows: int
    arhn_rows: int
    mine_seed: int = 13
    max_steps: int | None = None  # None: the train config's epochs
    judges: str | None = None
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    results: Path | None = None  # results.md; None: <out>/results.md
    quick: bool = False

    @property
    def prefix(self) -> str:
        return self.dataset.name


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


METHOD_SETS = {  # the knobs of each method recipe tied to the mined rows
    # every mined negative in the one prompt, and room for a verdict that lists each of them twice (the tiny
    # judge does: 7 negatives at 120 tokens were cut short, 19 of 32 verdicts unparseable)
    "rlhn": lambda d: {"rlhn.negatives_per_prompt": d.negatives, "rlhn.max_new_tokens": max(120, 25 * d.negatives + 20)},
    "arhn": lambda d: {"arhn.max_negatives": d.negatives, "arhn.retriever_max_length": d.max_length,
                       "arhn.extract_max_new_tokens": max(400, 90 * d.negatives)},  # one snippet block per passage
    "clear": lambda d: {"clear.retriever_max_length": d.max_length},
    "percpos": lambda d: {},
}


def recipe_sets(s: Settings, method: str) -> list[str]:
    """The dataset's values in a shared method recipe (``--set key=value`` pairs): subset, card, knobs."""
    d = s.dataset
    name = {"percpos": "TopK-PercPos"}.get(method, method.upper())
    values = {
        "sources.0.subset": d.name,
        "card.license": d.card_license,
        "card.pretty_name": json.dumps(f"{d.title} train, MiniLM-mined negatives, {name}"),
        "card.source_dataset": json.dumps(d.source_dataset),
        "card.see_also": json.dumps([os.path.relpath(d.results, ROOT)]),  # the dataset's table in the tree
        **METHOD_SETS[method](d),
    }
    return [a for k, v in values.items() for a in ("--set", f"{k}={v}")]


def build(s: Settings, method: str, source: Path, timings: dict) -> tuple[Path, dict]:
    folder = s.out / "builds" / method
    store = s.out / "stores" / method / "judgments.sqlite"
    cmd = [sys.executable, "-m", "builders.cli", str(RECIPES / f"{method}.yaml"), "--no-progress",
           "--set", f"sources.0.path={source}", "--out", str(folder), "--set", f"output.store={store}",
           *recipe_sets(s, method)]
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


def base_model(s: Settings, timings: dict) -> tuple[dict, dict]:
    """The bundled MiniLM, no fine-tuning, evaluated at the trained models' max_seq_length; -> (metrics, per query)."""
    from builders.embedding import default_model_path

    folder = s.out / "models" / "base"
    out = s.out / "metrics" / "base.json"
    per_query = s.out / "metrics" / "base-per-query.json"
    want = hashlib.sha256(f"{default_model_path()}|{s.dataset.max_length}|{s.out / 'beir'}".encode()).hexdigest()
    done = s.out / "metrics" / "base.stamp"
    if done.exists() and done.read_text() == want and out.exists() and per_query.exists():
        print("reusing the base model's evaluation", flush=True)
        return json.loads(out.read_text())["embedder"], json.loads(per_query.read_text())["queries"]
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(default_model_path(), folder)
    cfg = folder / "sentence_bert_config.json"
    c = json.loads(cfg.read_text())
    c["max_seq_length"] = s.dataset.max_length
    cfg.write_text(json.dumps(c, indent=2))
    out.parent.mkdir(parents=True, exist_ok=True)
    timings["evaluate base"] = run([sys.executable, "-m", "trainers.evaluate", "--model", str(folder), "--beir",
                                    str(s.out / "beir"), "--split", "test", "--json-out", str(out),
                                    "--per-query-out", str(per_query)], s.out / "logs" / "evaluate-base.log")
    done.write_text(want)
    return json.loads(out.read_text())["embedder"], json.loads(per_query.read_text())["queries"]


def stamp(s: Settings, dataset: Path, seed: int) -> str:
    """What a finished (variant, seed) run depends on: its rows, the config file, the seed and the settings."""
    h = hashlib.sha256()
    for part in (dataset.read_bytes(), s.dataset.train_config.read_bytes(), str(seed).encode(), str(s.max_steps).encode(),
                 str(s.out / "beir").encode()):
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()


def finished(folder: Path, want: str) -> bool:
    done = folder / "run.stamp"
    return done.exists() and done.read_text() == want and (folder / "eval_per_query.json").exists()


def train(s: Settings, variant: str, dataset: Path, seed: int, timings: dict, reused: dict) -> tuple[dict, dict]:
    """Train + evaluate one (variant, seed), or reuse a finished run with the same stamp: its own from an earlier
    invocation, or another variant's whose training rows are byte-identical (e.g. a judge that changed no row:
    same rows, config and seed train the same model on CPU); -> (metrics, per-query metrics)."""
    out = s.out / "models" / f"{variant}-s{seed}"
    want = stamp(s, dataset, seed)
    done = out / "run.stamp"
    twin = next((f for f in sorted((s.out / "models").glob(f"*-s{seed}")) if f != out and finished(f, want)), None)
    if twin is not None and not finished(out, want):
        reused[f"{variant} seed {seed}"] = twin.name.rsplit("-s", 1)[0]
        print(f"{variant} seed {seed}: the same rows as {twin.name}; reusing its run", flush=True)
        out = twin
    elif not finished(out, want):
        if out.exists():
            shutil.rmtree(out)  # every variant trains from the base model: never resume another run's checkpoint
        cmd = [sys.executable, "trainers/train.py", str(s.dataset.train_config), "--dataset", str(dataset),
               "--seed", str(seed), "--output_dir", str(out), "--eval_beir_dir", str(s.out / "beir")]
        if s.max_steps:
            cmd += ["--max_steps", str(s.max_steps)]
        timings[f"train+evaluate {variant} seed {seed}"] = run(cmd, s.out / "logs" / f"train-{variant}-s{seed}.log")
        done.write_text(want)
    else:
        print(f"reusing {out} (same rows, config and seed)", flush=True)
    metrics = json.loads((out / "train_summary.json").read_text())["metrics"]
    return metrics, json.loads((out / "eval_per_query.json").read_text())["queries"]


# (variant, its control): picking the right negatives vs as many at random
CONTROLS = (("oracle_remove", "random_remove"), ("percpos", "random_percpos"))


def paired_table(per_query: dict[str, list[dict]]) -> dict[str, dict]:
    """Each variant (and the base model) vs ``default``: the paired test over the test queries."""
    if "default" not in per_query:
        return {}
    default = stats.seed_mean(per_query["default"])
    return {v: stats.paired(stats.seed_mean(runs), default).as_dict() for v, runs in per_query.items() if v != "default"}


def control_table(per_query: dict[str, list[dict]]) -> dict[str, dict]:
    """Each variant vs its control (``CONTROLS``), paired the same way."""
    return {f"{a} − {b}": stats.paired(stats.seed_mean(per_query[a]), stats.seed_mean(per_query[b])).as_dict()
            for a, b in CONTROLS if a in per_query and b in per_query}


def report_only(s: Settings) -> Path:
    """Rewrite results.md and the plot from ``<out>/results.json`` and the runs' per-query files on disk
    (no mining, build or training): what the last run measured, with the current report."""
    raw = json.loads((s.out / "results.json").read_text(encoding="utf-8"))
    per_query = {"base": [json.loads((s.out / "metrics" / "base-per-query.json").read_text())["queries"]]}
    for v in raw["metrics"]:
        if v != "base":
            folders = [s.out / "models" / f"{raw['facts'].get('reused', {}).get(f'{v} seed {n}', v)}-s{n}" for n in raw["facts"]["seeds"]]
            per_query[v] = [json.loads((f / "eval_per_query.json").read_text())["queries"] for f in folders]
    raw["paired"], raw["controls"] = paired_table(per_query), control_table(per_query)
    results = s.results or (s.out / "results.md")
    (s.out / "results.json").write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    report.write(results, raw, plot_path=results.with_name("ndcg_per_variant.png"))
    print(f"rewrote {results} from {s.out / 'results.json'}")
    return results


def main_run(s: Settings) -> Path:
    start = time.time()
    d = s.dataset
    load_before = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    timings: dict[str, float] = {}
    beir = datasets.unpack(s.out / "beir", d.data)
    if s.quick:
        datasets.shrink(beir, *d.quick)
    t = time.time()
    mined = mine.mine(beir, d.negatives, s.mine_seed, d.max_length)
    timings["mine (in process)"] = time.time() - t
    docs = {str(doc["_id"]): doc for doc in datasets.read_jsonl(beir / "corpus.jsonl")}
    rows = variants.training_rows(mined, s.train_rows, s.mine_seed, fn_first=d.fn_first)
    judged = variants.judged_rows(rows, s.judged_rows, s.mine_seed, balanced=d.balanced_judged)
    judged_by = {m: judged for m in variants.JUDGED}
    judged_by["arhn"] = variants.judged_rows(judged, min(s.arhn_rows, len(judged)), s.mine_seed, balanced=d.balanced_judged)
    rows_dir = s.out / "rows"
    default_rows = [mine.tevatron_row(r, docs, s.prefix) for r in rows]
    train_file = mine.write_jsonl(rows_dir / "train.jsonl", default_rows)
    labels_train = mine.write_labels(s.out / "labels" / "train.tsv", rows, s.prefix)
    judged_files, judged_labels = {}, {}
    for m, rs in judged_by.items():
        judged_files[m] = mine.write_jsonl(rows_dir / f"judged-{m}.jsonl", [mine.tevatron_row(r, docs, s.prefix) for r in rs])
        judged_labels[m] = mine.write_labels(s.out / "labels" / f"judged-{m}.tsv", rs, s.prefix)

    sets = {"default": default_rows,
            "oracle_remove": [variants.oracle_row(r, docs, s.prefix, relabel=False) for r in rows],
            "oracle_relabel": [variants.oracle_row(r, docs, s.prefix, relabel=True) for r in rows],
            "random_remove": [variants.random_remove_row(r, docs, s.prefix, s.mine_seed) for r in rows]}
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
    if "random_percpos" in s.variants and "percpos" in sets:  # as many dropped per row as PercPos dropped, at random
        kept = {r["query_id"]: len(r["negative_passages"]) for r in sets["percpos"]}
        sets["random_percpos"] = [variants.random_remove_row(r, docs, s.prefix, s.mine_seed,
                                                             k=len(r.negatives) - kept.get(f"{s.prefix}-{r.query_id}", 0))
                                  for r in rows]
    files = {v: mine.write_jsonl(s.out / "train" / f"{v}.jsonl", sets[v]) for v in s.variants}

    base, base_per_query = base_model(s, timings)
    metrics: dict[str, list[dict]] = {"base": [base]}
    per_query: dict[str, list[dict]] = {"base": [base_per_query]}
    reused: dict[str, str] = {}  # "variant seed n" -> the variant whose identical run it reused
    for v in s.variants:
        runs = [train(s, v, files[v], seed, timings, reused) for seed in s.seeds]
        metrics[v] = [m for m, _ in runs]
        per_query[v] = [q for _, q in runs]
    fn_rows = [r for r in rows if r.false_negatives]
    test_qrels = datasets.read_qrels(beir / "qrels" / "test.tsv")
    facts = {
        "dataset": d.name, "title": d.title, "licence": d.licence,
        "mined_rows": len(mined), "train_rows": len(rows), "judged_rows": len(judged),
        "held_out": sum(len(r.held_out) for r in mined), "known_fn_all": sum(len(r.false_negatives) for r in mined),
        "negatives_all": sum(len(r.negatives) for r in mined),
        "known_fn_train": sum(len(r.false_negatives) for r in rows), "fn_rows_train": len(fn_rows),
        "negatives_train": sum(len(r.negatives) for r in rows),
        "known_fn_judged": sum(len(r.false_negatives) for r in judged),
        "judged_fn_rows": sum(1 for r in judged if r.false_negatives),
        "arhn_rows": len(judged_by["arhn"]), "arhn_fn_rows": sum(1 for r in judged_by["arhn"] if r.false_negatives),
        "negatives": d.negatives, "max_length": d.max_length, "seeds": s.seeds, "quick": s.quick,
        "fn_first": d.fn_first, "balanced_judged": d.balanced_judged,
        "judges": s.judges or "local (bundled SmolLM2-135M-Instruct)", "corpus_docs": len(docs),
        "test_queries": len(test_qrels), "train_config": os.path.relpath(d.train_config, ROOT),
        "max_steps": s.max_steps, "total_seconds": time.time() - start, "timings": timings, "reused": reused,
        "load_before": load_before, "load_after": "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), "cores": os.cpu_count(),
    }
    counts = {v: {**variants.counts(sets[v]), **info[v]} for v in s.variants}
    results = s.results or (s.out / "results.md")
    raw = {"facts": facts, "counts": counts, "metrics": metrics, "agreement": agree, "paired": paired_table(per_query),
           "controls": control_table(per_query)}
    (s.out / "results.json").write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    report.write(results, raw, plot_path=results.with_name("ndcg_per_variant.png"))
    print(f"wrote {results} and {results.with_name('ndcg_per_variant.png')} in {facts['total_seconds'] / 60:.1f} min")
    return results


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m experiments.negatives", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="nfcorpus", choices=sorted(DATASETS), help="which shipped BEIR set (default nfcorpus)")
    ap.add_argument("--quick", action="store_true", help="check the machinery in a few minutes (numbers mean nothing)")
    ap.add_argument("--seeds", type=int, default=None, help="training seeds 1..N (default 3; --quick: 1)")
    ap.add_argument("--judges", help="endpoints file (YAML/JSON list) for every judge stage; default: the local judge")
    ap.add_argument("--judged-rows", type=int, default=None, help="rows the LLM judges see (default: the dataset's; --quick: 2)")
    ap.add_argument("--arhn-rows", type=int, default=None, help="of those, the rows ARHN judges (default: the dataset's; --quick: 2)")
    ap.add_argument("--train-rows", type=int, default=None, help="training rows (default: the dataset's; 0 = every train query; "
                                                                 "--quick: 24)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}")
    ap.add_argument("--report-only", action="store_true", help="rewrite results.md from the last run's results.json and "
                                                                   "per-query files (no mining, build or training)")
    ap.add_argument("--out", help="work folder (default runs/negatives-<dataset>[-quick])")
    ap.add_argument("--results", help="results.md path (default: experiments/negatives/<dataset>/results.md; "
                                      "--quick: <out>/results.md)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    quick = args.quick
    d = DATASETS[args.dataset]
    chosen = [v for v in args.variants.split(",") if v]
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    if "default" not in chosen:
        chosen.insert(0, "default")  # every paired test is against default
    out = Path(args.out or f"runs/negatives-{d.name}" + ("-quick" if quick else "")).resolve()
    results = Path(args.results).resolve() if args.results else (None if quick else d.results)
    train_rows = args.train_rows if args.train_rows is not None else (24 if quick else d.train_rows)
    s = Settings(dataset=d, out=out, seeds=list(range(1, (args.seeds or (1 if quick else 3)) + 1)),
                 train_rows=train_rows or None,
                 judged_rows=args.judged_rows or (2 if quick else d.judged_rows),
                 arhn_rows=args.arhn_rows or (2 if quick else d.arhn_rows),
                 max_steps=2 if quick else None, judges=args.judges, variants=chosen, results=results, quick=quick)
    out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        report_only(s)
    else:
        main_run(s)
    return 0
