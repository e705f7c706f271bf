"""The card's ``dataset_info`` and the fingerprint that keeps ``load_dataset(folder, config)`` fresh.

What keys a read in ``datasets`` 5.2 (read from its source). ``load_dataset`` prepares each config
once into ``<HF_DATASETS_CACHE>/<dataset_name>/<config_id>/<version>/<hash>/`` and serves every
later read with the same four parts from there (``builder.py``, ``_relative_data_dir``, l. 628-646):

- ``dataset_name``: the folder's BASENAME (``load.py`` l. 475) or the repo name with its namespace
  (``org___name``, l. 676 and ``builder.py`` l. 640); ``config_id``: the config name (no config
  kwargs passed); ``version``: ``0.0.0``.
- ``hash`` of a local folder: ``Hasher.hash({"dataset_infos", "builder_configs"})`` (``load.py``
  l. 497). With ``configs:`` in README.md the builder configs hold the data-file PATTERNS
  (``rlhn/train-*``), not the files (``load.py`` l. 337, ``data_files.py``
  ``DataFilesPatternsList``), and ``dataset_infos`` is the card's ``dataset_info`` (``info.py``
  ``DatasetInfosDict.from_dataset_card_data``, l. 387). A card with neither sizes nor anything
  else that follows the files gives every rebuild, and every folder with the same basename, the
  same key: the first read's rows are served silently, and a forced reload fails with
  ``NonMatchingSplitsSizesError`` because the cached ``dataset_info.json`` (old counts) is read
  back over the new build (``builder.py`` l. 413, ``utils/info_utils.py`` ``verify_splits``).
- ``hash`` of a Hub repo: the commit sha that ``revision=`` resolves to (``load.py`` l. 1112,
  ``HubDatasetModuleFactory.get_module`` l. 709): each pushed commit has its own key already.

So the card carries, per config, what ``push_to_hub`` writes (``arrow_dataset.py``
``_get_updated_dataset_card``, written with datasets' own ``DatasetInfosDict.to_dataset_card_data``):
features, ``splits`` (``num_examples``; ``num_bytes``: the loaded table's Arrow bytes, see
``arrow_nbytes``), ``download_size`` (the parquet files' bytes) and ``dataset_size``. These make
``load_dataset`` verify the row counts, but sizes alone can collide (the judge moves another negative
to the positives: same rows, same bytes), so each ``configs:`` entry also gets
``description: "sha256:<hex> ..."``, the digest of its files.
``description`` is a ``BuilderConfig`` field, so it is part of the builder configs that enter the
hash: the key follows the bytes of the files, and a byte-identical rebuild reuses its cache.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from datasets import DatasetInfo, Features, SplitDict, SplitInfo
from datasets.info import DatasetInfosDict

FINGERPRINT = "sha256:{digest} of this config's parquet files (it keys the `datasets` cache of a local read)"


def config_files(folder: Path, entry: dict) -> dict[str, list[Path]]:
    """split -> the files of a ``configs:`` entry (its ``data_files`` patterns, in sorted order)."""
    out: dict[str, list[Path]] = {}
    for item in entry["data_files"]:
        patterns = [item["path"]] if isinstance(item["path"], str) else item["path"]
        out[item["split"]] = sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})
    return out


_UNBUFFERED = pads.ParquetFileFormat(default_fragment_scan_options=pads.ParquetFragmentScanOptions(pre_buffer=False))


def arrow_nbytes(path: Path) -> int:
    """The Arrow bytes of one parquet file as ``load_dataset`` holds it, which ``push_to_hub`` writes
    as ``num_bytes`` (``Dataset._estimate_nbytes``: the table's ``nbytes``). The ParquetBuilder reads
    each file in batches of its first row group's size (``packaged_modules/parquet/parquet.py``
    ``_generate_tables``) and its ArrowWriter stores them in the Arrow IPC file the dataset maps
    (``arrow_writer.py`` ``_write_table``; its 1,000-row record batches do not change ``nbytes``,
    which adds up over slices). The IPC round trip matters: it drops the validity bitmaps the
    parquet reader allocates for columns without nulls (the count ``datasets`` records while it
    prepares, ``ds.info.splits[...].num_bytes``, keeps them: a few bytes more per int column and
    batch). One batch at a time, with ``pre_buffer`` off (its default, on, caches the whole file:
    at 100K BGE rows that was +600 MiB of peak RSS): memory stays flat."""
    with open(path, "rb") as f:
        fragment = _UNBUFFERED.make_fragment(f)
        if not fragment.row_groups:
            return 0
        batches = fragment.to_batches(batch_size=fragment.row_groups[0].num_rows, batch_readahead=0, fragment_readahead=0)
        return sum(_mapped_nbytes(batch) for batch in batches)


def _mapped_nbytes(batch: pa.RecordBatch) -> int:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return pa.ipc.open_stream(sink.getvalue()).read_next_batch().nbytes


def config_info(folder: Path, entry: dict) -> DatasetInfo:
    """The ``DatasetInfo`` that ``push_to_hub`` would record for this config's files."""
    name = entry["config_name"]
    files = config_files(folder, entry)
    first = next((f for fs in files.values() for f in fs), None)
    if first is None:
        raise FileNotFoundError(f"config {name!r}: no file in {folder} matches {entry['data_files']}; rebuild the folder")
    info = DatasetInfo(config_name=name, features=Features.from_arrow_schema(pq.read_schema(first)), splits=SplitDict(),
                       download_size=0, dataset_size=0)
    for split, paths in files.items():
        rows = sum(pq.ParquetFile(p).metadata.num_rows for p in paths)
        nbytes = sum(arrow_nbytes(p) for p in paths)
        info.splits.add(SplitInfo(name=split, num_bytes=nbytes, num_examples=rows))
        info.download_size += sum(p.stat().st_size for p in paths)
        info.dataset_size += nbytes
    info.size_in_bytes = info.download_size + info.dataset_size
    return info


def fingerprint(folder: Path, entry: dict) -> str:
    """sha256 over the config's files: each file's path in the folder, its size, its bytes."""
    digest = hashlib.sha256()
    for split, paths in sorted(config_files(folder, entry).items()):
        for path in paths:
            digest.update(f"{split}\0{path.relative_to(folder).as_posix()}\0{path.stat().st_size}\0".encode())
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def describe_configs(folder: str | Path, entries: list[dict]) -> tuple[list[dict], dict | list]:
    """The card's ``configs:`` (each entry with its files' fingerprint as ``description``) and its
    ``dataset_info`` (a mapping for one config, else a list sorted by config name, as
    ``push_to_hub`` writes it), for the files now in ``folder``."""
    folder = Path(folder)
    configs = [{**e, "description": FINGERPRINT.format(digest=fingerprint(folder, e))} for e in entries]
    card: dict = {}
    DatasetInfosDict({e["config_name"]: config_info(folder, e) for e in entries}).to_dataset_card_data(card)
    return configs, card.get("dataset_info", [])
