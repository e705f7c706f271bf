"""``python -m builders.distributed RECIPE --workers N [--shards S] [--executor local|slurm|ray]
[--root DIR] [--out DIR] [--set key=value ...] [--merge-only]``

Runs a build as S shards (``builders.scale.shard``: by query_id hash, each with its own judgment
store, resumable) on datatrove's executors, then merges them into the dataset a
single-machine build of the same recipe writes (byte-identical; see ``builders.scale.shard``).

Why datatrove, not Ray itself or a home-made pool:
- its unit of work is exactly ours: task ``rank`` of ``world_size``, run as many times as it
  takes until its completion file exists, and a rerun skips completed ranks. Together with a
  shard's own judgment store, a crashed or preempted task resumes where it stopped;
- one pipeline runs unchanged on ``LocalPipelineExecutor`` (processes on this machine),
  ``SlurmPipelineExecutor`` (a job array; the merge is a dependent job) and
  ``RayPipelineExecutor`` (a Ray cluster): clusters are a choice of executor, not new code;
- it installs cleanly next to torch (pure Python: datatrove + loguru + humanize; checked with
  ``pip install --dry-run``), while Ray brings a ~70 MB wheel, protobuf and a GCS/raylet
  daemon set, which is a lot to start for one local run on a 2-core machine. Ray remains
  one flag away (``--executor ray``, ``pip install ray``).

The judge calls are I/O on remote endpoints, so a "worker" here is a concurrent client, not
a CPU: N workers against the same endpoints multiply in-flight requests by N.

Layout under ``--root`` (default ``.hardneg-cache/<name>/shards-S``): ``shard-IIIII-of-SSSSS/``
per shard, ``logs/`` (datatrove's task logs, stats and completion marks) and ``merge/`` (the
united judgment store and the merge report). Rerun the same command after a failure: completed
shards are skipped, unfinished ones resume from their stores, and the merge is redone.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from datatrove.pipeline.base import PipelineStep

from builders.recipe import Recipe, load_recipe
from builders.scale.shard import STORE, build_shard, default_root, merge
from builders.sources.shard_rows import Shard


class ShardBuildStep(PipelineStep):
    """datatrove step: task ``rank`` of ``world_size`` builds shard ``rank/world_size``."""

    name = "hardneg shard build"
    type = "JUDGE"

    def __init__(self, recipe: Recipe, root: str, command: str):
        super().__init__()
        self.recipe = recipe
        self.root = root
        self.command = command

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        report = build_shard(self.recipe, Shard(rank, world_size), self.root, self.command, progress=False, out=sys.stderr)
        for name, n in report["configs"].items():
            self.stat_update(f"rows:{name}", value=n)
        if data:
            yield from data


class MergeStep(PipelineStep):
    """datatrove step (one task): merge the shards under ``root`` into ``out_dir``."""

    name = "hardneg merge"
    type = "MERGE"

    def __init__(self, recipe: Recipe, root: str, shards: int, out_dir: str, command: str):
        super().__init__()
        self.recipe, self.root, self.shards, self.out_dir, self.command = recipe, root, shards, out_dir, command

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        merge_shards(self.recipe, self.root, self.shards, self.out_dir, self.command, progress=False, out=sys.stderr)
        if data:
            yield from data


def shard_dirs(root: str | Path, shards: int) -> list[Path]:
    return [Path(root) / Shard(i, shards).folder_name for i in range(shards)]


def merge_shards(recipe: Recipe, root: str | Path, shards: int, out_dir: str | Path, command: str, progress: bool = True, out=None) -> dict:
    return merge(recipe, shard_dirs(root, shards), out_dir, command, store=Path(root) / "merge" / STORE, progress=progress, out=out)


def run_distributed(
    recipe: Recipe,
    *,
    workers: int,
    shards: int | None = None,
    executor: str = "local",
    root: str | Path | None = None,
    out_dir: str | Path | None = None,
    command: str = "",
    progress: bool = True,
    out=None,
    slurm: dict | None = None,
) -> dict | None:
    """Build ``shards`` shards with ``workers`` at a time, then merge. Returns the merge report
    (``None`` with ``executor="slurm"``: the jobs are submitted, the merge is a dependent job)."""
    shards = shards or workers
    if workers < 1 or shards < 1:
        raise ValueError(f"--workers and --shards must be >= 1 (got {workers}, {shards})")
    root = Path(root or default_root(recipe, shards))
    out_dir = Path(out_dir or recipe.output.folder)
    steps = [ShardBuildStep(recipe, str(root), command)]
    logs = str(root / "logs")
    if executor == "local":
        from datatrove.executor import LocalPipelineExecutor

        runner = LocalPipelineExecutor(steps, tasks=shards, workers=workers, logging_dir=logs)
    elif executor == "ray":
        from datatrove.executor.ray import RayPipelineExecutor  # needs `pip install ray`

        runner = RayPipelineExecutor(steps, tasks=shards, workers=workers, logging_dir=logs)
    elif executor == "slurm":
        from datatrove.executor.slurm import SlurmPipelineExecutor

        options = dict(slurm or {})
        if not options.get("partition") or not options.get("time"):
            raise ValueError("--executor slurm needs --slurm-partition and --slurm-time (e.g. 24:00:00)")
        shard_jobs = SlurmPipelineExecutor(steps, tasks=shards, workers=workers, logging_dir=logs, job_name=f"{recipe.name}-shards", **options)
        merge_job = SlurmPipelineExecutor(
            [MergeStep(recipe, str(root), shards, str(out_dir), command)], tasks=1, logging_dir=str(root / "logs-merge"),
            job_name=f"{recipe.name}-merge", depends=shard_jobs, **options,
        )
        merge_job.run()  # submits the shard array first, then the merge once it succeeded
        print(f"submitted {shards} shard task(s) and the merge to Slurm; logs under {root}", file=out or sys.stdout)
        return None
    else:
        raise ValueError(f"--executor must be local, slurm or ray; got {executor!r}")
    runner.run()
    incomplete = runner.get_incomplete_ranks()
    if incomplete:
        raise RuntimeError(f"shard task(s) {incomplete} of {shards} did not complete; see {logs}/logs and rerun the same command (finished shards are kept)")
    return merge_shards(recipe, root, shards, out_dir, command, progress=progress, out=out)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m builders.distributed", description=__doc__.split("\n\n")[1])
    p.add_argument("recipe")
    p.add_argument("--workers", type=int, required=True, help="shard tasks running at the same time")
    p.add_argument("--shards", type=int, help="number of shards (default: --workers)")
    p.add_argument("--executor", choices=["local", "slurm", "ray"], default="local")
    p.add_argument("--root", help="folder for shards, logs and the merge store (default .hardneg-cache/<name>/shards-S)")
    p.add_argument("--out", help="output folder (default: the recipe's output.folder)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key (dotted), value read as YAML")
    p.add_argument("--slurm-partition")
    p.add_argument("--slurm-time", help="time limit per shard task, e.g. 24:00:00")
    p.add_argument("--merge-only", action="store_true", help="only merge shards already built under --root (e.g. with `python -m builders.cli RECIPE --shard i/N` on several machines)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = parser()
    args = p.parse_args(argv)
    overrides = []
    for item in args.set:
        if "=" not in item:
            p.error(f"--set needs KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        overrides.append((k.strip(), v))
    recipe = load_recipe(args.recipe, overrides)
    command = "python -m builders.distributed " + " ".join(shlex.quote(a) for a in argv if a != "--no-progress")
    if args.merge_only:
        shards = args.shards or args.workers
        root = args.root or default_root(recipe, shards)
        merge_shards(recipe, root, shards, args.out or recipe.output.folder, command, progress=not args.no_progress)
        return 0
    report = run_distributed(
        recipe, workers=args.workers, shards=args.shards, executor=args.executor, root=args.root, out_dir=args.out,
        command=command, progress=not args.no_progress, slurm={"partition": args.slurm_partition, "time": args.slurm_time},
    )
    return 0 if report is not None or args.executor == "slurm" else 1


if __name__ == "__main__":
    raise SystemExit(main())
