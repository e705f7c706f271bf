"""Build small refined dataset folders (Hub layout, Tevatron columns) from the RLHN fixture rows."""

from __future__ import annotations

import json
from pathlib import Path

import datasets

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "rlhn" / "fiqa.stage_1.gpt-4o-mini.jsonl"
COLUMNS = ("query_id", "query", "positive_passages", "negative_passages", "subset")


def fixture_rows(n: int = 25, passage_chars: int = 300) -> list[dict]:
    rows = []
    for line in FIXTURE.read_text().splitlines()[:n]:
        raw = json.loads(line)
        row = {k: raw[k] for k in COLUMNS}
        for key in ("positive_passages", "negative_passages"):
            row[key] = [{"docid": p["docid"], "title": p.get("title") or "", "text": p["text"][:passage_chars]}
                        for p in row[key]]
        rows.append(row)
    return rows


def write_refined(out: Path, configs: dict[str, list[dict]]) -> Path:
    """``out/<config>/train-00000-of-00001.parquet`` + README front matter listing the configs."""
    out.mkdir(parents=True, exist_ok=True)
    front = ["---", "configs:"]
    for name, rows in configs.items():
        (out / name).mkdir(exist_ok=True)
        datasets.Dataset.from_list(rows).to_parquet(str(out / name / "train-00000-of-00001.parquet"))
        front += [f"- config_name: {name}", "  data_files:", "  - split: train", f"    path: {name}/*.parquet"]
    (out / "README.md").write_text("\n".join(front + ["---", "", "test dataset"]) + "\n")
    return out


def multi_positive_rows(n: int = 6) -> list[dict]:
    """Rows where two negatives were promoted to positives (what rlhn/CLEAR produce), with scores."""
    rows = []
    for i, row in enumerate(fixture_rows(n)):
        negs = row["negative_passages"]
        extra = 1 + i % 2
        row = dict(row, positive_passages=row["positive_passages"] + negs[:extra], negative_passages=negs[extra:])
        n_labeled = len(row["positive_passages"]) - extra
        row["positive_scores"] = [1.0] * n_labeled + [0.5 - 0.1 * j for j in range(extra)]
        row["negative_scores"] = [0.0] * len(row["negative_passages"])
        rows.append(row)
    return rows
