"""``python -m experiments.negatives --dataset scifact --quick`` end to end, the path a user runs, with every judge
stage on the TGI stand-in (the one ``--judges`` flag): it mines, builds PercPos / RLHN / ARHN / CLEAR,
trains every variant for 2 steps, evaluates and writes results.md + the plot. The numbers mean nothing;
what is checked is that each step ran and the table holds what the run measured."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.stand_ins.tgi_server import prompt_of

ROOT = Path(__file__).resolve().parents[2]


def first_sentence(text: str) -> str:
    line = text.strip().splitlines()[0]
    return line.split(". ")[0] if ". " in line else line


def respond(request: dict) -> str:
    """A scripted judge for any SciFact row: RLHN flags Doc (1); the extraction copies the first sentence of
    documents 1 and 2 (verbatim) and answers NO_ANSWER for the rest; the ranking puts [2] first."""
    prompt = prompt_of(request)
    if "<verdict>" in prompt:
        return "Doc (1) supports the claim. <verdict><better> [] </better>, <worse> [Doc (1)] </worse></verdict>"
    n = re.search(r"Reply with exactly (\d+) blocks", prompt)
    if n:
        docs = dict(re.findall(r"Document (\d+):\n(.+)", prompt))
        blocks = []
        for k in range(1, int(n.group(1)) + 1):
            text = first_sentence(docs[str(k)]) if k <= 2 and str(k) in docs else "NO_ANSWER"
            blocks.append(f"[[[doc{k}]]]\n{text}\n[[[/doc{k}]]]")
        return "\n".join(blocks)
    entries = sorted({int(i) for i in re.findall(r"^\[(\d+)\]", prompt, flags=re.M)})
    order = ([2] if 2 in entries else []) + [i for i in entries if i != 2]
    return " > ".join(f"[{i}]" for i in order)


@pytest.mark.long  # ~2 min: .ci/run's second tier (./run.sh test -m long)
def test_quick_mode_writes_the_table_and_plot(tmp_path, tgi_stand_in):
    server = tgi_stand_in(respond)
    judges = tmp_path / "judges.yaml"
    judges.write_text(yaml.safe_dump([{"kind": "tgi", "url": server.url, "model": "stand-in/judge"}]))
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "experiments.negatives", "--dataset", "scifact", "--quick", "--judges", str(judges),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    raw = json.loads((out / "results.json").read_text())
    assert set(raw["metrics"]) == {"base", "default", "oracle_remove", "oracle_relabel", "random_remove", "percpos", "random_percpos", "rlhn", "arhn", "clear"}
    for variant, runs in raw["metrics"].items():
        assert len(runs) == 1 and 0 < runs[0]["ndcg@10"] <= 1, variant
    counts, facts = raw["counts"], raw["facts"]
    assert counts["default"]["rows"] == counts["oracle_relabel"]["rows"] == facts["train_rows"] == 24
    # the oracles move exactly the known false negatives of the training rows into the positives, or drop them
    assert counts["oracle_relabel"]["positives"] - counts["default"]["positives"] == facts["known_fn_train"] > 0
    assert counts["oracle_relabel"]["negatives"] == counts["default"]["negatives"] - facts["known_fn_train"]
    assert counts["oracle_remove"]["positives"] == counts["default"]["positives"]
    assert counts["oracle_remove"]["negatives"] == counts["oracle_relabel"]["negatives"] == counts["random_remove"]["negatives"]
    assert counts["random_percpos"]["negatives"] == counts["percpos"]["negatives"]
    # every variant has its paired test against default over the same test queries
    assert set(raw["paired"]) == {"base", "oracle_remove", "oracle_relabel", "random_remove", "percpos", "random_percpos", "rlhn", "arhn", "clear"}
    assert all(p["queries"] == facts["test_queries"] for p in raw["paired"].values())
    # the judges were the stand-in, and they were asked about the judged rows
    assert server.requests and facts["judges"] == str(judges)
    for method in ("rlhn", "arhn", "clear"):
        assert counts[method]["judge_answers"] > 0 and counts[method]["judged_rows"] == 2, method
    # RLHN's scripted verdict flags Doc (1) of both judged rows: two negatives become positives
    assert counts["rlhn"]["positives"] == counts["default"]["positives"] + 2
    agree = raw["agreement"]["rlhn"]["overall"]
    assert agree["n"] == 2 * facts["negatives"] and agree["table"]["human_0"]["judge_1"] + agree["table"]["human_1"]["judge_1"] == 2
    results = (out / "results.md").read_text()
    assert "| oracle_relabel |" in results and "## Paired test against `default`" in results and "| base (no fine-tuning) |" in results and "Quick mode" in results
    assert (out / "ndcg_per_variant.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (out / "builds" / "rlhn" / "README.md").read_text()
    assert "## See also" in card and "experiments/negatives/scifact/results.md" in card
    model_card = (out / "models" / "oracle_relabel-s1" / "model" / "README.md").read_text()
    assert "## See also" in model_card and "experiments/negatives/scifact/results.md" in model_card
