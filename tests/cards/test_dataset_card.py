from collections import Counter

import yaml

from builders.methods.base import JudgeInfo, MethodResult
from builders.output.writers import configs_yaml_entries
from builders.rows import Passage, QueryRow
from cards.dataset_card import CHANGELOG_END, CHANGELOG_START, DatasetCardInfo, render_dataset_card


def _result(name, judges, stats):
    row = QueryRow.from_query("q", [Passage.from_text("p")], [Passage.from_text("n")], "fiqa")
    r = MethodResult(name=name, configs={"default": [row], name: [row]}, judges=judges)
    for subset, counters in stats.items():
        r.stats[subset] = Counter(counters)
    return r


def _info(results):
    return DatasetCardInfo(
        pretty_name="Test build",
        license="mit",
        configs=configs_yaml_entries(["rlhn", "default", "judgments"], default="rlhn"),
        results=results,
        command="python -m builders.cli recipes/sample.yaml --set rlhn.refine.max_flagged=4",
        source_datasets=["cfli/bge-full-data"],
        source_revision="78f5c99b",
        sources_kept=["fiqa", "msmarco_passage"],
        rows_per_config={"rlhn": 24, "default": 25, "judgments": 42},
        validation={"policy": "skip", "rows_read": 26, "rows_kept": 25, "rows_skipped": 1, "rows_repaired": 0, "problem_counts": {"duplicate_passage:skipped": 1}},
        method_settings={"rlhn": {"max_flagged": 4}},
        citations=["rlhn", "bge"],
    )


def test_card_metadata_sections_and_markers():
    rlhn = _result(
        "rlhn",
        [JudgeInfo("rlhn/stage1", "gpt-4o-mini", "rlhn-default-v1-abc", "OpenAIBackend"), JudgeInfo("rlhn/stage2", "gpt-4o", "rlhn-default-v1-abc", "OpenAIBackend")],
        {"fiqa": {"rows_in": 25, "flagged_stage1": 17, "flagged_stage2": 10, "parse_failures": 0, "rlhn:rows": 25, "rlhn:positives": 97, "rlhn:negatives": 352, "remove:rows": 15}},
    )
    text = render_dataset_card(_info([rlhn]))
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["license"] == "mit" and meta["task_categories"] == ["text-retrieval"]
    assert meta["configs"][0] == {"config_name": "rlhn", "data_files": [{"split": "train", "path": "rlhn/train-*"}]}
    assert meta["source_datasets"] == ["cfli/bge-full-data"] and meta["size_categories"] == ["n<1K"]
    assert text.count(CHANGELOG_START) == 1 and text.count(CHANGELOG_END) == 1
    assert text.index("## Changelog") < text.index(CHANGELOG_START) < text.index(CHANGELOG_END)
    assert "| rlhn/stage1 | `gpt-4o-mini` | OpenAIBackend | `rlhn-default-v1-abc` |" in text
    assert "| fiqa | 25 | 17 | 10 | 0 |" in text  # rows_in, flagged_stage1, flagged_stage2, parse_failures
    assert "| rlhn | fiqa | 25 | 97 | 352 |" in text
    assert "--set rlhn.refine.max_flagged=4" in text and "revision `78f5c99b`" in text
    assert "`duplicate_passage:skipped`: 1" in text and "fiqa, msmarco_passage" in text
    assert "@article{thakur2025rlhn" in text


def test_other_methods_get_their_own_section_without_template_changes():
    rlhn = _result("rlhn", [JudgeInfo("rlhn/stage1", "m1", "v1", "TGIBackend")], {"fiqa": {"flagged_stage1": 3}})
    percpos = _result("percpos", [JudgeInfo("percpos/teacher", "all-MiniLM-L6-v2", "-", "local")], {"fiqa": {"negatives_removed": 7, "percpos:rows": 25}})
    text = render_dataset_card(_info([rlhn, percpos]))
    assert "## Method: rlhn" in text and "## Method: percpos" in text
    assert "| percpos/teacher | `all-MiniLM-L6-v2` | local | `-` |" in text
    assert "negatives_removed" in text and "| percpos | fiqa | 25 |" in text
    assert "percpos" in yaml.safe_load(text.split("---\n")[1])["tags"]


def test_empty_configs_are_named():
    info = _info([_result("rlhn", [], {"fiqa": {"rows_in": 1}})])
    info.empty_configs = ["remove"]
    assert "without rows, so not written: remove" in render_dataset_card(info)


def test_dataset_info_goes_into_the_yaml_that_datasets_reads():
    from dataclasses import replace

    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard

    infos = [{"config_name": c, "features": [{"name": "query", "dtype": "string"}],
              "splits": [{"name": "train", "num_bytes": 10 * n, "num_examples": n}], "download_size": 7 * n, "dataset_size": 10 * n}
             for c, n in (("default", 25), ("judgments", 42), ("rlhn", 24))]
    plain = yaml.safe_load(render_dataset_card(_info([])).split("---\n")[1])
    assert "dataset_info" not in plain  # none given: none written
    configs = [{**e, "description": f"sha256:{i}"} for i, e in enumerate(_info([]).configs)]
    text = render_dataset_card(replace(_info([]), configs=configs, dataset_info=infos))
    meta = yaml.safe_load(text.split("---\n")[1])
    assert list(meta).index("dataset_info") == list(meta).index("configs") - 1 and meta["dataset_info"] == infos
    data = DatasetCard(text).data
    read = DatasetInfosDict.from_dataset_card_data(data)
    assert {c: i.splits["train"].num_examples for c, i in read.items()} == {"default": 25, "judgments": 42, "rlhn": 24}
    assert MetadataConfigs.from_dataset_card_data(data)["rlhn"]["description"] == "sha256:0"


def test_see_also_links_are_listed_only_when_given():
    info = _info([_result("rlhn", [], {})])
    assert "## See also" not in render_dataset_card(info)
    info.see_also = ["experiments/negatives/scifact/results.md"]
    card = render_dataset_card(info)
    assert "## See also\n\n- experiments/negatives/scifact/results.md\n" in card
    assert card.index("## See also") < card.index("## Reproduce")
