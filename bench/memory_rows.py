"""Peak memory of a build against the number of rows: does it stay flat?

    python bench/memory_rows.py                    # 10,000 and 100,000 rows
    python bench/memory_rows.py --rows 2000 20000  # any sizes
    python bench/memory_rows.py --set output.chunk_rows=null   # any recipe override

Writes synthetic rows shaped like the BGE collection (``query, pos, neg``: 1 positive and 25
negatives of ~80 words each, every passage distinct) to a jsonl file per size, then runs the
real build (``builders.build.build``: read -> validate -> RLHN -> techniques -> parquet per
config + card) on it in a fresh process and reads that process's peak RSS (``VmHWM``), and
beside it the peak of the reader process that reads and validates past the first chunk. The
subset is listed in ``rlhn.never_edit_subsets``, so no judge is called: this measures
the data path, not an endpoint. Prints both figures and their ratio (flat memory: a ratio
near 1 while the rows grow 10x) and whether the peak at the largest size is within 10 % of
``--goal-mib`` (520 MiB, the figure the streamed build first reached; exits 1 when not).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NEGATIVES = 25
WORDS_PER_PASSAGE = 80
VOCAB = [f"{a}{b}" for a in ("al", "bo", "ce", "du", "ek", "fi", "go", "ha", "ir", "jo", "ku", "lo", "mi", "nu", "or", "pa")
         for b in ("rin", "tas", "mol", "ven", "dor", "lik", "sum", "pra", "tev", "nox", "gal", "quin", "ber", "sot", "wen", "yar")]


def write_rows(path: Path, n: int, seed: int = 0) -> int:
    """``n`` BGE-layout rows into ``path`` -> bytes written. Passages are 80-word windows at
    random offsets of one long random text, so they are distinct and cheap to make."""
    rng = random.Random(seed)
    text = [rng.choice(VOCAB) for _ in range(2_000_000)]
    limit = len(text) - WORDS_PER_PASSAGE

    def passage() -> str:
        o = rng.randrange(limit)
        return " ".join(text[o : o + WORDS_PER_PASSAGE])

    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            row = {"query": f"synthetic query {i}: " + " ".join(text[i % limit : i % limit + 8]), "pos": [passage()], "neg": [passage() for _ in range(NEGATIVES)]}
            f.write(json.dumps(row) + "\n")
    return path.stat().st_size


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(source: str, out: str, overrides: list[str]) -> None:
    """Runs in a fresh process: one build, then print peak RSS as JSON."""
    import io

    from builders.build import build
    from builders.recipe import load_recipe

    base = [
        ("name", "memory-bench"),
        ("sources", json.dumps([{"path": source, "subset": "synthetic"}])),
        ("validation.policy", "skip"),
        ("rlhn.never_edit_subsets", "[synthetic]"),
        # never called (every row is untouched); an HTTP judge is built without loading a model
        ("judges.stage1", "{kind: tgi, url: 'http://127.0.0.1:9', model: unused}"),
        ("output.folder", out + "/dataset"),
        ("output.store", out + "/judgments.sqlite"),
    ]
    recipe = load_recipe(None, base + [tuple(o.split("=", 1)) for o in overrides])
    stop, reader = threading.Event(), {"peak": 0.0}
    watcher = threading.Thread(target=watch_reader, args=(stop, reader), daemon=True)
    watcher.start()
    started = time.perf_counter()
    report = build(recipe, "python bench/memory_rows.py", progress=False, out=io.StringIO())
    seconds = time.perf_counter() - started
    stop.set()
    watcher.join()
    print(json.dumps({"peak_rss_mib": peak_rss_mib(), "reader_peak_rss_mib": reader["peak"],
                      "seconds": seconds, "rows": report["configs"]}))


def watch_reader(stop: threading.Event, reader: dict) -> None:
    """The peak RSS (VmHWM) of the build's reader process (``builders.sources.reader_process``,
    a child of this process past the first chunk), read from /proc every 0.1 s."""
    while not stop.wait(0.1):
        for children in Path("/proc/self/task").glob("*/children"):
            for pid in children.read_text().split():
                try:
                    if b"reader_process" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                        continue
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            reader["peak"] = max(reader["peak"], int(line.split()[1]) / 1024)
                except OSError:
                    continue  # it ended meanwhile


def measure(n: int, workdir: Path, overrides: list[str]) -> dict:
    source = workdir / f"rows-{n}.jsonl"
    t0 = time.perf_counter()
    size = write_rows(source, n)
    made = time.perf_counter() - t0
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, __file__, "--child", str(source), str(workdir / f"out-{n}")] + [f"--set={o}" for o in overrides]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"build of {n} rows failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(source_mib=size / 2**20, generate_s=made)
    source.unlink()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override for the measured build")
    p.add_argument("--goal-mib", type=float, default=520.0, help="peak RSS at the largest size must stay within 10 %% of this")
    p.add_argument("--child", nargs=2, metavar=("SOURCE", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], args.set)
        return 0
    results = {}
    with tempfile.TemporaryDirectory(prefix="hardneg-memory-") as tmp:
        for n in args.rows:
            r = results[n] = measure(n, Path(tmp), args.set)
            print(f"{n:>9,} rows ({r['source_mib']:,.0f} MiB of jsonl): peak RSS {r['peak_rss_mib']:,.0f} MiB "
                  f"(+ the reader process's {r['reader_peak_rss_mib']:,.0f} MiB), build {r['seconds']:,.1f} s", flush=True)
    lo, hi = min(args.rows), max(args.rows)
    print(f"peak RSS ratio {hi:,} / {lo:,} rows: {results[hi]['peak_rss_mib'] / results[lo]['peak_rss_mib']:.2f} (rows x{hi / lo:g})")
    met = results[hi]["peak_rss_mib"] <= 1.1 * args.goal_mib
    print(f"peak RSS at {hi:,} rows: {results[hi]['peak_rss_mib']:,.0f} MiB, goal within 10 % of {args.goal_mib:,.0f} MiB: "
          f"{'MET' if met else 'NOT MET'}")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
