"""Agreement between a build's decisions and human labels (Cohen's κ, the 2×2 table, per subset).

    python -m builders.agreement --human labels.tsv --build out/ --method arhn_rf [--json report.json]

Human labels: one row per (query, hard negative): ``query_id`` (or ``query``, hashed the way
the rows are), ``docid``, ``label`` (1 = relevant, i.e. a false negative; 0 = a true
negative). TSV with a header line, or JSON lines.

A build's decision for a pair comes from comparing the method's config with ``default``
(any method, any build): a negative of ``default`` that is no longer among the method
config's negatives (moved to the positives or removed) is judged a false negative (1); one
still there is a true negative (0). Pairs that cannot be decided are counted, never guessed:
the query is not in the build (``unknown_query``), the docid is not a negative of that query
in ``default`` (``not_a_negative``), or the method dropped the whole row (``row_dropped``).
``--from-judgments`` reads ARHN/PRHN per-document decisions from the ``judgments`` config
instead (rows with a ``decisions`` list); unjudged documents (no stage-1 block, a failed call)
are then unmatched (``unjudged``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from builders.rows import md5


@dataclass
class Confusion:
    """Rows: human label, columns: judge label. ``both_1`` = both say false negative."""

    both_1: int = 0
    human_1_judge_0: int = 0
    human_0_judge_1: int = 0
    both_0: int = 0

    def add(self, human: int, judge: int) -> None:
        if human and judge:
            self.both_1 += 1
        elif human:
            self.human_1_judge_0 += 1
        elif judge:
            self.human_0_judge_1 += 1
        else:
            self.both_0 += 1

    @property
    def n(self) -> int:
        return self.both_1 + self.human_1_judge_0 + self.human_0_judge_1 + self.both_0

    @property
    def observed_agreement(self) -> float | None:
        return (self.both_1 + self.both_0) / self.n if self.n else None

    @property
    def kappa(self) -> float | None:
        """Cohen's κ = (p_o − p_e) / (1 − p_e); None when undefined (no pairs, or p_e = 1:
        both raters used a single label)."""
        n = self.n
        if not n:
            return None
        p_o = (self.both_1 + self.both_0) / n
        human_1 = (self.both_1 + self.human_1_judge_0) / n
        judge_1 = (self.both_1 + self.human_0_judge_1) / n
        p_e = human_1 * judge_1 + (1 - human_1) * (1 - judge_1)
        if math.isclose(p_e, 1.0):
            return None
        return (p_o - p_e) / (1 - p_e)

    def to_dict(self) -> dict:
        return {
            "n": self.n, "kappa": self.kappa, "observed_agreement": self.observed_agreement,
            "table": {"human_1": {"judge_1": self.both_1, "judge_0": self.human_1_judge_0},
                      "human_0": {"judge_1": self.human_0_judge_1, "judge_0": self.both_0}},
        }


@dataclass
class AgreementReport:
    method: str
    overall: Confusion = field(default_factory=Confusion)
    by_subset: dict[str, Confusion] = field(default_factory=lambda: defaultdict(Confusion))
    unmatched: Counter = field(default_factory=Counter)
    human_pairs: int = 0

    def to_dict(self) -> dict:
        return {
            "method": self.method, "human_pairs": self.human_pairs, "overall": self.overall.to_dict(),
            "by_subset": {s: c.to_dict() for s, c in sorted(self.by_subset.items())},
            "unmatched": dict(self.unmatched),
        }

    def table(self) -> str:
        def fmt(x):
            return "n/a" if x is None else f"{x:.3f}"

        lines = [f"agreement with human labels: {self.method}  ({self.human_pairs} labelled pairs)",
                 f"{'subset':<24}{'n':>6}{'kappa':>8}{'agree':>8}{'H1J1':>6}{'H1J0':>6}{'H0J1':>6}{'H0J0':>6}"]
        rows = sorted(self.by_subset.items()) + [("ALL", self.overall)]
        for name, c in rows:
            lines.append(f"{name:<24}{c.n:>6}{fmt(c.kappa):>8}{fmt(c.observed_agreement):>8}"
                         f"{c.both_1:>6}{c.human_1_judge_0:>6}{c.human_0_judge_1:>6}{c.both_0:>6}")
        if self.unmatched:
            lines.append("unmatched pairs: " + ", ".join(f"{k}={v}" for k, v in sorted(self.unmatched.items())))
        return "\n".join(lines)


def read_human_labels(path: str | Path) -> dict[tuple[str, str], int]:
    """(query_id, docid) -> 0/1. Errors name the file and line; conflicting duplicates fail."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"human labels file {path} does not exist")
    records: list[tuple[int, dict]] = []
    with path.open(encoding="utf-8") as f:
        if path.suffix in (".jsonl", ".json"):
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        records.append((lineno, json.loads(line)))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{lineno}: not a JSON object ({e}); one JSON object per line") from e
        else:
            reader = csv.DictReader(f, delimiter="\t")
            if not reader.fieldnames or "docid" not in reader.fieldnames or "label" not in reader.fieldnames:
                raise ValueError(f"{path}:1: header must name query_id (or query), docid and label, tab-separated; "
                                 f"got {reader.fieldnames}")
            records = [(i, row) for i, row in enumerate(reader, start=2)]
    labels: dict[tuple[str, str], int] = {}
    for lineno, rec in records:
        where = f"{path}:{lineno}"
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected an object with query_id, docid, label")
        query_id = rec.get("query_id") or (md5(rec["query"]) if rec.get("query") else None)
        docid = rec.get("docid")
        if not query_id or not docid:
            raise ValueError(f"{where}: needs query_id (or query) and docid")
        raw = str(rec.get("label", "")).strip().lower()
        if raw in ("1", "1.0", "true", "relevant"):
            label = 1
        elif raw in ("0", "0.0", "false", "not_relevant"):
            label = 0
        else:
            raise ValueError(f"{where}: label {rec.get('label')!r} for query_id {query_id} docid {docid}: "
                             "use 1 (relevant / false negative) or 0 (true negative)")
        key = (str(query_id), str(docid))
        if key in labels and labels[key] != label:
            raise ValueError(f"{where}: query_id {query_id} docid {docid} labelled both 0 and 1; fix one of them")
        labels[key] = label
    return labels


def _read_config(build: Path, config: str) -> list[dict]:
    import pyarrow.parquet as pq

    files = sorted((build / config).glob("*.parquet"))
    if not files:
        have = sorted(p.name for p in build.iterdir() if p.is_dir()) if build.is_dir() else []
        raise FileNotFoundError(f"{build}: no config {config!r} (no {config}/*.parquet); configs present: {have}")
    rows = []
    for f in files:
        rows.extend(pq.read_table(f).to_pylist())
    return rows


def _negatives(row: dict) -> list[str]:
    return [p["docid"] for p in row.get("negative_passages") or []]


def decisions_from_configs(build: Path, method: str) -> tuple[dict[str, tuple[str, dict[str, int]]], set[str]]:
    """query_id -> (subset, {negative docid of default -> 0/1}) and the query_ids the method dropped."""
    default = {r["query_id"]: r for r in _read_config(build, "default")}
    edited = {r["query_id"]: r for r in _read_config(build, method)}
    out, dropped = {}, set()
    for qid, row in default.items():
        if qid not in edited:
            dropped.add(qid)
            continue
        kept = set(_negatives(edited[qid]))
        out[qid] = (row.get("subset") or "unknown", {d: int(d not in kept) for d in _negatives(row)})
    return out, dropped


def decisions_from_judgments(build: Path, method: str) -> dict[str, tuple[str, dict[str, int]]]:
    """ARHN/PRHN decision rows (``decisions`` lists) -> the same shape as ``decisions_from_configs``.
    ``method`` is a config name such as ``arhn_rf`` or ``prhn_filter``."""
    prefix, _, variant = method.partition("_")
    counted = {"relabel": {"relabel"}, "filter": {"filter"}, "rf": {"relabel", "filter"}}.get(variant)
    if counted is None:
        raise ValueError(f"--from-judgments needs an ARHN/PRHN config name (<arhn|prhn>_<relabel|filter|rf>), got {method!r}")
    out: dict[str, tuple[str, dict[str, int]]] = {}
    name = f"judgments_{prefix}" if (build / f"judgments_{prefix}").is_dir() else "judgments"  # per-method config, else older builds
    for r in _read_config(build, name):
        if r.get("method") != prefix or not r.get("decisions"):
            continue
        decisions = r["decisions"] if isinstance(r["decisions"], list) else json.loads(r["decisions"])
        out[r["query_id"]] = (r.get("subset") or "unknown", {
            d["docid"]: int(d["decision"] in counted) for d in decisions if d["decision"] != "unjudged"})
    return out


def agreement(labels: dict[tuple[str, str], int], decisions: dict, dropped: set[str] = frozenset(),
              method: str = "", judged_docids: dict[str, set[str]] | None = None) -> AgreementReport:
    report = AgreementReport(method=method, human_pairs=len(labels))
    for (qid, docid), human in labels.items():
        if qid in dropped:
            report.unmatched["row_dropped"] += 1
            continue
        if qid not in decisions:
            report.unmatched["unknown_query"] += 1
            continue
        subset, per_doc = decisions[qid]
        if docid not in per_doc:
            unjudged = judged_docids is not None and docid in judged_docids.get(qid, set())
            report.unmatched["unjudged" if unjudged else "not_a_negative"] += 1
            continue
        report.overall.add(human, per_doc[docid])
        report.by_subset[subset].add(human, per_doc[docid])
    return report


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m builders.agreement", description=__doc__.split("\n\n")[0])
    ap.add_argument("--human", required=True, help="labels .tsv (header query_id/query, docid, label) or .jsonl")
    ap.add_argument("--build", required=True, help="a build folder (<config>/*.parquet, Hub layout)")
    ap.add_argument("--method", default="rlhn", help="config to compare with default (rlhn, hn_remove, arhn_rf, prhn_filter, percpos, ...)")
    ap.add_argument("--from-judgments", action="store_true", help="read ARHN/PRHN decisions from the judgments config")
    ap.add_argument("--json", help="also write the JSON report to this file")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    build = Path(args.build)
    try:
        labels = read_human_labels(args.human)
        if args.from_judgments:
            decisions = decisions_from_judgments(build, args.method)
            default = {r["query_id"]: set(_negatives(r)) for r in _read_config(build, "default")}
            dropped: set[str] = set()
            for qid, negs in default.items():  # queries the method never judged are unmatched as unjudged
                decisions.setdefault(qid, ("unknown", {}))
            report = agreement(labels, decisions, dropped, args.method, judged_docids=default)
        else:
            decisions, dropped = decisions_from_configs(build, args.method)
            report = agreement(labels, decisions, dropped, args.method)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.table())
    payload = json.dumps(report.to_dict(), indent=2)
    print(payload)
    if args.json:
        Path(args.json).write_text(payload + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
