"""Issue 11: stock ``load_dataset`` reads the rows a build wrote, never an earlier build's.

Every test reads the way a user does (stock ``datasets.load_dataset``, no flags) with ONE
``datasets`` cache for the whole test, so an earlier read can serve a later one if the cache key
does not follow the files. Builds go through the CLI with the replayed RLHN judges (no real
judge); a second build with other refine settings answers from the judgment store.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
import yaml

from builders.cli import main
from tests.builders.methods.rlhn.test_rlhn_replay import replay_recipe_dict, stages_for


@pytest.fixture
def one_cache(tmp_path, monkeypatch) -> Path:
    """One ``datasets`` cache for the whole test (what a user's Python environment has)."""
    cache = tmp_path / "hf-datasets-cache"
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "DOWNLOADED_DATASETS_PATH", cache / "downloads")
    monkeypatch.setattr(datasets.config, "EXTRACTED_DATASETS_PATH", cache / "downloads" / "extracted")
    return cache


@pytest.fixture
def replay(tgi_stand_in, tmp_path, monkeypatch):
    """``build(out, *sets)``: the CLI over the fiqa replay recipe, run from ``tmp_path``."""
    servers, _ = stages_for(tgi_stand_in, subsets=("fiqa",))
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(replay_recipe_dict(servers[0].url, servers[1].url)))
    monkeypatch.chdir(tmp_path)

    def build(out: str, *sets: str) -> None:
        argv = ["recipe.yaml", "--no-progress", "--out", out]
        for s in sets:
            argv += ["--set", s]
        assert main(argv) == 0

    build.servers = servers
    return build


def files_rows(folder: Path, config: str) -> list[dict]:
    """The rows the folder's parquet files hold, read without ``datasets``."""
    return [r for f in sorted((folder / config).glob("train-*.parquet")) for r in pq.read_table(f).to_pylist()]


def card_yaml(folder: Path) -> dict:
    return yaml.safe_load((folder / "README.md").read_text(encoding="utf-8").split("---\n")[1])


def test_rebuild_in_place_with_other_refine_settings_reads_the_new_rows(replay, tmp_path, one_cache, capsys):
    replay("out/x")
    first = datasets.load_dataset("out/x", "rlhn", split="train").to_list()
    assert first == files_rows(tmp_path / "out/x", "rlhn")
    calls = len(replay.servers[0].requests)

    replay("out/x", "rlhn.refine.max_flagged=2")
    assert len(replay.servers[0].requests) == calls, "the rebuild answers from the judgment store"
    now = files_rows(tmp_path / "out/x", "rlhn")
    assert len(now) < len(first), "max_flagged=2 drops rows: the test needs two different builds"
    assert datasets.load_dataset("out/x", "rlhn", split="train").to_list() == now
    # the line the CLI prints is the same plain read, and it is fresh too
    line = capsys.readouterr().out.rsplit("ds = ", 1)[1].strip()
    assert line == f'datasets.load_dataset("{tmp_path / "out/x"}", "rlhn", split="train")'
    assert eval(line, {"datasets": datasets}).to_list() == now
    # forcing a reload regenerates the same rows (it raised NonMatchingSplitsSizesError before)
    forced = datasets.load_dataset("out/x", "rlhn", split="train", download_mode="force_redownload")
    assert forced.to_list() == now
    for config in card_yaml(tmp_path / "out/x")["configs"]:
        name = config["config_name"]
        assert datasets.load_dataset("out/x", name, split="train").to_list() == files_rows(tmp_path / "out/x", name)
    # back to the first settings: byte-identical files, the first build's cache entry serves them
    replay("out/x")
    assert files_rows(tmp_path / "out/x", "rlhn") == first
    assert datasets.load_dataset("out/x", "rlhn", split="train").to_list() == first


def test_builds_in_folders_with_the_same_name_each_read_their_own_rows(replay, tmp_path, one_cache):
    replay("a/out/sample")
    replay("b/out/sample", "rlhn.refine.max_flagged=2")
    a, b = tmp_path / "a/out/sample", tmp_path / "b/out/sample"
    assert files_rows(a, "rlhn") != files_rows(b, "rlhn")
    for _ in range(2):  # in either order, from the cache or not
        assert datasets.load_dataset(str(a), "rlhn", split="train").to_list() == files_rows(a, "rlhn")
        assert datasets.load_dataset(str(b), "rlhn", split="train").to_list() == files_rows(b, "rlhn")


def write_folder(folder: Path, rows) -> dict:
    """A one-config folder written the way ``builders.build`` writes one: parquet, then the card."""
    from builders.output.dataset_info import describe_configs
    from builders.output.writers import configs_yaml_entries, write_dataset_repo
    from cards.dataset_card import DatasetCardInfo, write_dataset_card

    write_dataset_repo(folder, {"rlhn": rows})
    configs, dataset_info = describe_configs(folder, configs_yaml_entries(["rlhn"]))
    write_dataset_card(folder, DatasetCardInfo("t", "mit", configs, [], "python -m builders.cli t.yaml", dataset_info=dataset_info))
    return card_yaml(folder)


def test_same_counts_and_sizes_with_other_rows_still_read_fresh(tmp_path, one_cache):
    """The judge picked another negative as the false negative: same rows, same Arrow and file
    bytes, so `dataset_info` alone gives both folders one cache key; the fingerprint separates them."""
    from builders.rows import Passage, QueryRow

    p = [Passage.from_text(f"passage number {i} about kiwis") for i in range(6)]
    row = QueryRow.from_query("which bird is a kiwi", p[:1], p[1:], "nq")
    a = write_folder(tmp_path / "a" / "out", [row.with_passages([p[0], p[1]], [p[2], p[3], p[4], p[5]])])
    b = write_folder(tmp_path / "b" / "out", [row.with_passages([p[0], p[2]], [p[1], p[3], p[4], p[5]])])
    assert a["dataset_info"] == b["dataset_info"], "the two builds must collide on every size for this test"
    assert a["configs"][0]["description"] != b["configs"][0]["description"]
    for folder in (tmp_path / "a" / "out", tmp_path / "b" / "out", tmp_path / "a" / "out"):
        assert datasets.load_dataset(str(folder), "rlhn", split="train").to_list() == files_rows(folder, "rlhn")


def push_to_hub_dataset_info(folder: Path, loaded: dict[str, datasets.Dataset], scratch: Path):
    """The card's `dataset_info` that `Dataset.push_to_hub` would write for these loaded configs,
    uploaded as the folder's own parquet files: datasets' own card update, config after config."""
    from datasets.arrow_dataset import _get_updated_dataset_card
    from fsspec.implementations.dirfs import DirFileSystem
    from fsspec.implementations.local import LocalFileSystem

    scratch.mkdir()
    fs = DirFileSystem(path=str(scratch), fs=LocalFileSystem())
    for name, ds in loaded.items():
        split = datasets.SplitInfo(name="train", num_bytes=ds._estimate_nbytes(), num_examples=len(ds))  # as _push_parquet_shards_to_hub
        size = sum(p.stat().st_size for p in (folder / name).glob("train-*.parquet"))
        card, _ = _get_updated_dataset_card(fs=fs, config_name=name, splits_info=[split], features=ds.features, data_dir=name,
                                            set_default=False, uploaded_sizes=[size], deleted_sizes=[0], remove_other_splits=False)
        (scratch / "README.md").write_text(str(card), encoding="utf-8")
    return card_yaml(scratch)["dataset_info"]


def test_card_sizes_are_the_files_and_what_datasets_counts(replay, tmp_path, one_cache):
    replay("out/sample")
    folder = tmp_path / "out/sample"
    card = card_yaml(folder)
    infos = {i["config_name"]: i for i in card["dataset_info"]}
    names = [c["config_name"] for c in card["configs"]]
    assert sorted(infos) == sorted(names) and len(names) > 3
    loaded = {}
    for name in names:
        files = sorted((folder / name).glob("train-*.parquet"))
        ds = loaded[name] = datasets.load_dataset("out/sample", name, split="train")  # never NonMatchingSplitsSizesError
        info = infos[name]
        (split,) = info["splits"]
        assert split["num_examples"] == sum(pq.ParquetFile(f).metadata.num_rows for f in files) == len(ds)
        assert info["download_size"] == sum(f.stat().st_size for f in files) == ds.info.download_size
        assert split["num_bytes"] == ds._estimate_nbytes() == info["dataset_size"]  # the Arrow bytes push_to_hub counts
        assert datasets.Features._from_yaml_list(info["features"]) == ds.features
    assert card["dataset_info"] == push_to_hub_dataset_info(folder, loaded, tmp_path / "pushed")


def test_arrow_bytes_follow_datasets_for_any_row_groups(tmp_path, one_cache):
    """`num_bytes` is the loaded table's Arrow bytes (what push_to_hub writes), whatever the row
    groups (the parquet reader's batches, then the prepared Arrow file's 1,000-row record batches)."""
    import pyarrow as pa

    from builders.output.dataset_info import describe_configs
    from builders.output.writers import configs_yaml_entries

    n = 2500
    table = pa.table({"query": [f"query {i}" * (i % 7) for i in range(n)], "ids": [list(range(i % 5)) for i in range(n)],
                      "tokens": list(range(n)), "score": [None if i % 3 else i / 7 for i in range(n)]})
    (tmp_path / "out" / "rlhn").mkdir(parents=True)
    with pq.ParquetWriter(tmp_path / "out" / "rlhn" / "train-00000-of-00002.parquet", table.schema) as w:
        for start, rows in ((0, 300), (300, 1000), (1300, 1000)):  # a short first row group, then longer ones
            w.write_table(table.slice(start, rows))
    pq.write_table(table.slice(2300), tmp_path / "out" / "rlhn" / "train-00001-of-00002.parquet")  # one row group
    big = tmp_path / "big" / "rlhn"
    big.mkdir(parents=True)
    pq.write_table(table, big / "train-00000-of-00001.parquet")  # one 2,500-row group: split into record batches
    for folder in (tmp_path / "out", tmp_path / "big"):
        configs, info = describe_configs(folder, configs_yaml_entries(["rlhn"]))
        (folder / "README.md").write_text("---\n" + yaml.safe_dump({"dataset_info": info, "configs": configs}) + "---\n")
        ds = datasets.load_dataset(str(folder), "rlhn", split="train")
        assert info["splits"] == [{"name": "train", "num_bytes": ds._estimate_nbytes(), "num_examples": n}]
        assert ds.to_list() == table.to_pylist()


def test_pushed_versions_each_read_their_own_rows_in_one_cache(replay, tmp_path):
    """v1.0, then v1.1 (other refine settings) pushed with hardneg's push; each read at its
    `revision=` and `main` after v1.1 in the stand-in's one cache; each version's card states the
    sizes of that version's files."""
    from huggingface_hub import HfApi

    from builders.output.publish import push_dataset
    from tests.stand_ins.hub_server import hub_stand_in

    repo = "org/rlhn-fresh"
    with hub_stand_in(tmp_path) as hub:
        replay("out/sample")
        v10 = {c: files_rows(tmp_path / "out/sample", c) for c in ("rlhn", "default")}
        first = push_dataset("out/sample", repo, version="v1.0", token=hub.token)
        replay("out/sample", "rlhn.refine.max_flagged=2")
        v11 = {c: files_rows(tmp_path / "out/sample", c) for c in ("rlhn", "default")}
        second = push_dataset("out/sample", repo, version="v1.1", token=hub.token)
        assert v10["rlhn"] != v11["rlhn"] and first.commit_sha != second.commit_sha
        api = HfApi(token=hub.token)
        for revision, rows in (("v1.0", v10), ("v1.1", v11), ("main", v11), ("v1.0", v10)):
            for config, expected in rows.items():
                got = datasets.load_dataset(repo, config, split="train", revision=revision, token=hub.token)
                assert got.to_list() == expected, f"{config}@{revision}"
            card = yaml.safe_load(open(api.hf_hub_download(repo, "README.md", repo_type="dataset", revision=revision)).read().split("---\n")[1])
            sizes = {f.path: f.size for f in api.list_repo_tree(repo, repo_type="dataset", revision=revision, recursive=True) if hasattr(f, "size")}
            for info in card["dataset_info"]:
                files = [p for p in sizes if p.startswith(f"{info['config_name']}/train-")]
                assert info["download_size"] == sum(sizes[p] for p in files), f"{info['config_name']}@{revision}"
            assert {i["config_name"]: i["splits"][0]["num_examples"] for i in card["dataset_info"] if i["config_name"] in rows} == {
                c: len(r) for c, r in rows.items()}
