"""Sharded builds: ``--shard i/N`` judges only the rows whose query_id hashes to shard ``i``,
and ``merge`` assembles N finished shards into the dataset a single-machine build writes.

Which rows a shard owns: ``builders.sources.shard_rows`` (md5 of query_id, before validation).

Every shard is a whole build of its own: its folder ``shard-IIIII-of-NNNNN/`` holds its
judgment store (``judgments.sqlite``: resumable on its own, rerun it after a crash and only
unanswered calls are made), its dataset (``dataset/``, a loadable dataset of its rows),
``build_report.json`` and ``shard.json`` (index, count, recipe fingerprint, complete).

Merging. The judgments are the expensive, distributed part; assembling is cheap. ``merge``
checks that all N shards are complete and were built from the same recipe, unites their
judgment stores into one (disjoint keys; a key answered differently in two shards is an
error), then runs the ordinary build over the whole source with backends that can only read
the store: every call is answered from the united store, none is made (a missing answer
stops the merge naming the key). The output is therefore the single-machine build's,
byte for byte: same rows in the same (source) order in every config, same judgments table,
same card counts. ``tests/builders/scale/test_shard.py`` checks exactly that against a build made
from scratch on one machine.
"""

from __future__ import annotations

import copy
import json
import sqlite3
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

from builders.judges.endpoints import make_backend
from builders.judges.endpoints.base import Backend, GenerateRequest, Generation
from builders.judges.endpoints.spec import EndpointSpec
from builders.judges.store import JudgmentStore
from builders.recipe import Recipe, judge_plan
from builders.rows import md5
from builders.sources.shard_rows import Shard

MANIFEST = "shard.json"
STORE = "judgments.sqlite"
DATASET = "dataset"


# ------------------------------------------------------------------------------ recipes


def recipe_fingerprint(recipe: Recipe) -> str:
    """Everything that decides the output except where it is written."""
    d = asdict(recipe)
    d["output"] = {k: v for k, v in d["output"].items() if k not in ("folder", "store")}
    return md5(json.dumps(d, sort_keys=True, default=str))


def default_root(recipe: Recipe, count: int) -> Path:
    """Where ``--shard i/N`` and ``builders.distributed`` put the shards unless told otherwise."""
    return Path(".hardneg-cache") / recipe.name / f"shards-{count}"


def shard_recipe(recipe: Recipe, shard: Shard, root: str | Path) -> Recipe:
    """The recipe a shard builds: the same, written under ``root/shard-IIIII-of-NNNNN/``."""
    folder = Path(root) / shard.folder_name
    out = copy.deepcopy(recipe)
    out.output.folder = str(folder / DATASET)
    out.output.store = str(folder / STORE)
    return out


def write_manifest(recipe: Recipe, shard: Shard, folder: str | Path, complete: bool) -> Path:
    path = Path(folder) / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"index": shard.index, "count": shard.count, "recipe": recipe.name, "fingerprint": recipe_fingerprint(recipe), "complete": complete}
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def build_shard(recipe: Recipe, shard: Shard, root: str | Path, command: str, progress: bool = True, out=None) -> dict:
    """Build one shard into ``root/shard-IIIII-of-NNNNN/``; rerunning it resumes from its store."""
    from builders.build import build

    sr = shard_recipe(recipe, shard, root)
    folder = Path(root) / shard.folder_name
    write_manifest(recipe, shard, folder, complete=False)
    report = build(sr, command, progress=progress, out=out, shard=shard)
    write_manifest(recipe, shard, folder, complete=True)
    return report


# ------------------------------------------------------------------------------ merge


class MergeError(RuntimeError):
    pass


class StoredAnswersOnly(Backend):
    """Stands in for a judge during the merge: same judge id, kind and constraint support (so
    the requests, store keys and card are the ones the shards made), and no way to call anyone."""

    kind = "stored"

    def __init__(self, model_id: str, supports_constraint: frozenset[str], concurrency: int, kind: str):
        self.model_id = model_id
        self.supports_constraint = supports_constraint
        self.concurrency = max(1, concurrency)
        self.kind = kind

    @staticmethod
    def like(specs: list[EndpointSpec]) -> StoredAnswersOnly:
        """A stand-in for the judge the build makes of ``specs`` (one endpoint, or a fleet's:
        its first member's model id, the constraints all members support, their kinds)."""
        supports, kinds = [], set()
        for spec in specs:
            if spec.kind == "local":  # its class says what it supports; loading the model is not needed
                from builders.judges.endpoints.local import LocalBackend

                probe = LocalBackend
            else:
                probe = make_backend(spec)  # HTTP backends connect lazily: building one makes no call
            supports.append(frozenset(probe.supports_constraint))
            kinds.add(probe.kind)
        return StoredAnswersOnly(specs[0].model_id, frozenset.intersection(*supports), 64, "+".join(sorted(kinds)))

    async def generate(self, request: GenerateRequest) -> Generation:
        first = request.messages[-1]["content"][:200] if request.messages else ""
        raise MergeError(
            f"judge {self.model_id!r}: a request has no final answer in any shard's store (the merge makes no judge "
            f"calls). Were the shards built from this recipe, with --shard i/N for every i? Prompt starts: {first!r}"
        )


def store_only_backends(recipe: Recipe) -> dict[str, Backend]:
    """A stand-in for every judge the recipe's methods ask (``judge_plan``: RLHN's stages,
    ARHN's extract and rank, CLEAR's judge), equal endpoint lists sharing one."""
    built: list[tuple[list[EndpointSpec], Backend]] = []
    out = {}
    for name, specs in judge_plan(recipe).items():
        backend = next((b for s, b in built if s == specs), None)
        if backend is None:
            backend = StoredAnswersOnly.like(specs)
            built.append((specs, backend))
        out[name] = backend
    return out


def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.exists():
        raise MergeError(f"{folder} is not a shard folder (no {MANIFEST}); build shards with --shard i/N first")
    return json.loads(path.read_text(encoding="utf-8"))


def check_shards(recipe: Recipe, shard_dirs: list[Path]) -> int:
    """All N shards present once, complete, built from this recipe, nothing left to retry -> N."""
    if not shard_dirs:
        raise MergeError("no shard folders to merge")
    manifests = [(d, read_manifest(d)) for d in shard_dirs]
    counts = {m["count"] for _, m in manifests}
    if len(counts) != 1:
        raise MergeError(f"shards were cut with different N: {sorted(counts)}; merge the shards of one run")
    n = counts.pop()
    indices = sorted(m["index"] for _, m in manifests)
    if indices != list(range(n)):
        missing = sorted(set(range(n)) - set(indices))
        raise MergeError(f"need shards 0..{n - 1} exactly once; missing {missing}, given {indices}")
    want = recipe_fingerprint(recipe)
    for d, m in manifests:
        if m["fingerprint"] != want:
            raise MergeError(f"{d} was built from a different recipe (fingerprint {m['fingerprint']}, this recipe {want}); rebuild it or merge with its recipe")
        if not m["complete"]:
            raise MergeError(f"{d} did not finish; rerun shard {m['index']}/{n} (it resumes from its store)")
        conn = sqlite3.connect(f"file:{d / STORE}?mode=ro", uri=True)
        try:
            (pending,) = conn.execute("SELECT COUNT(*) FROM judgments WHERE status = 'failed' AND retryable = 1").fetchone()
        finally:
            conn.close()
        if pending:
            raise MergeError(f"{d}: {pending} judge call(s) failed with a retryable error; rerun shard {m['index']}/{n} to retry them, then merge")
    return n


def unite_stores(shard_dirs: list[Path], target: Path) -> int:
    """Copy every shard's judgments into a fresh store at ``target`` -> number of judgments."""
    if target.exists():
        target.unlink()
    for suffix in ("-wal", "-shm"):
        Path(str(target) + suffix).unlink(missing_ok=True)
    JudgmentStore(target).close()  # creates the schema
    conn = sqlite3.connect(target, isolation_level=None)
    try:
        for d in shard_dirs:
            conn.execute("ATTACH DATABASE ? AS shard", (str(d / STORE),))
            (clash,) = conn.execute(
                "SELECT COUNT(*) FROM shard.judgments s JOIN main.judgments m USING (stage, judge_model, prompt_version, key) "
                "WHERE s.status IS NOT m.status OR s.text IS NOT m.text OR s.request_sha IS NOT m.request_sha"
            ).fetchone()
            if clash:
                raise MergeError(f"{d}: {clash} judgment(s) answered differently in another shard; shards overlap (built with different N?)")
            conn.execute("BEGIN")
            conn.execute("INSERT OR IGNORE INTO main.judgments SELECT * FROM shard.judgments")
            conn.execute("COMMIT")
            conn.execute("DETACH DATABASE shard")
        (n,) = conn.execute("SELECT COUNT(*) FROM judgments").fetchone()
    finally:
        conn.close()
    return n


def merge(recipe: Recipe, shard_dirs: Iterable[str | Path], out_dir: str | Path, command: str, store: str | Path | None = None, progress: bool = True, out=None) -> dict:
    """Assemble finished shards into ``out_dir``, identical to a single-machine build of
    ``recipe``. ``store``: where the united judgment store goes (default
    ``<out_dir>.merge/judgments.sqlite``; the merge report lands beside it)."""
    from builders.build import build

    shard_dirs = [Path(d) for d in shard_dirs]
    check_shards(recipe, shard_dirs)
    out_dir = Path(out_dir)
    store = Path(store) if store else out_dir.with_name(out_dir.name + ".merge") / STORE
    store.parent.mkdir(parents=True, exist_ok=True)
    unite_stores(sorted(shard_dirs, key=lambda d: read_manifest(d)["index"]), store)
    merged = copy.deepcopy(recipe)
    merged.output.folder = str(out_dir)
    merged.output.store = str(store)
    return build(merged, command, progress=progress, out=out, backends=store_only_backends(recipe))
