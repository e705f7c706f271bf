"""``python -m builders.cli RECIPE [--set key=value ...] [--key value ...] [--dry-run]
[--out DIR] [--push org/name --version vX.Y [--private]] [--shard I/N [--shard-root DIR]]``

Builds the dataset a recipe names (see ``builders.recipe``); ``--dry-run`` only reads and
validates the sources and prints counts, one rendered prompt and the estimated prompt tokens
per stage. ``--push`` publishes the finished folder with ``builders.output.publish.push_dataset``.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from builders.recipe import load_recipe


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[tuple[str, str]]]:
    p = argparse.ArgumentParser(prog="python -m builders.cli", description=__doc__.split("\n\n")[0])
    p.add_argument("recipe", help="YAML recipe (e.g. recipes/sample.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key (dotted), value read as YAML")
    p.add_argument("--dry-run", action="store_true", help="counts, one rendered prompt, estimated prompt tokens; no judge calls")
    p.add_argument("--out", help="output folder (same as --set output.folder=DIR)")
    p.add_argument("--push", metavar="ORG/NAME", help="push the built folder to this Hub dataset repo")
    p.add_argument("--version", help="tag to create on the pushed commit, e.g. v1.0 (with --push)")
    p.add_argument("--private", action="store_true", help="create the Hub repo private (with --push)")
    p.add_argument("--shard", metavar="I/N", help="build only shard I of N (rows by query_id hash) into its own folder under --shard-root; "
                   "merge the N shards with `python -m builders.distributed RECIPE --workers N --merge-only`")
    p.add_argument("--shard-root", metavar="DIR", help="folder of the shards (default .hardneg-cache/<name>/shards-N)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args, rest = p.parse_known_args(argv)
    overrides: list[tuple[str, str]] = []
    for item in args.set:
        if "=" not in item:
            p.error(f"--set needs KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        overrides.append((k.strip(), v))
    i = 0
    while i < len(rest):  # --a.b value / --a.b=value
        tok = rest[i]
        if not tok.startswith("--") or len(tok) < 3:
            p.error(f"unexpected argument {tok!r}")
        if "=" in tok:
            k, v = tok[2:].split("=", 1)
            i += 1
        elif i + 1 < len(rest):
            k, v = tok[2:], rest[i + 1]
            i += 2
        else:
            p.error(f"{tok} needs a value")
        overrides.append((k.replace("-", "_"), v))
    if args.out:
        overrides.append(("output.folder", args.out))
    if args.version and not args.push:
        p.error("--version needs --push")
    if args.shard and (args.push or args.dry_run):
        p.error("--shard builds one shard: push the merged folder, and dry-run without --shard")
    return args, overrides


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, overrides = parse_args(argv)
    from builders.build import build, dry_run
    from builders.methods.base import BuildError
    from builders.sources.validate import InvalidRowError

    try:
        recipe = load_recipe(args.recipe, overrides)
        if args.dry_run:
            dry_run(recipe, progress=not args.no_progress)
            return 0
        command = "python -m builders.cli " + " ".join(shlex.quote(a) for a in argv if a != "--no-progress")
        if args.shard:
            from builders.scale.shard import build_shard, default_root
            from builders.sources.shard_rows import parse_shard

            shard = parse_shard(args.shard)
            build_shard(recipe, shard, args.shard_root or default_root(recipe, shard.count), command, progress=not args.no_progress)
            return 0
        report = build(recipe, command, progress=not args.no_progress)
    except (InvalidRowError, FileNotFoundError, BuildError) as error:  # bad input: say what and where, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.push:
        from builders.output.publish import push_dataset  # written by the hub helper; needed only for --push

        info = push_dataset(report["folder"], args.push, version=args.version, private=args.private, token=None,
                            build_report=report["report"])  # source revision, judges and counts for the changelog
        print(f"pushed to https://huggingface.co/datasets/{args.push}" + (f" (tag {args.version})" if args.version else ""))
        if info is not None:
            print(info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
