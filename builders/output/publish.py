"""Push a built dataset folder to the Hub as one commit, tagged with its version.

The folder is the builder's output in the Hub layout: `<config>/train-XXXXX-of-YYYYY.parquet` per
config, a `README.md` whose YAML front matter lists the `configs:`, its card holding a changelog
between `<!-- hardneg:changelog:start -->` and `<!-- hardneg:changelog:end -->`, and the build
report `hardneg_build.json` (source id and revision, judges, rows per config; when it is missing
the rows are counted from the parquet files).

What a push does, in order (nothing is uploaded before the checks pass):
1. token (argument / HF_TOKEN / HF login), version format, folder layout and row counts;
2. the version's tag must not exist on the repo (tags are never overwritten);
3. create the repo if needed, read the head of `revision` and the card there;
4. merge the changelog: the entries already on the Hub are kept, this version's entry goes on top;
5. one commit: every file of the folder, the merged card, and the deletion of parquet shards of the
   pushed configs that this build no longer has (a re-sharded config leaves no stale shards);
6. tag the commit with the version, so `load_dataset(repo, config, revision="v1.1")` reads exactly it.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
import yaml
from huggingface_hub import HfApi

from builders.output.hub import (
    LARGE_UPLOAD_BYTES,
    HubPushError,
    PushResult,
    add_push_options,
    assert_no_token,
    check_version,
    commit_and_tag,
    ensure_tag_free,
    local_files,
    prepare_repo,
    push_options,
    read_remote_text,
    remote_files,
    resolve_token,
    upload_resumable,
)

logger = logging.getLogger(__name__)

CHANGELOG_START = "<!-- hardneg:changelog:start -->"
CHANGELOG_END = "<!-- hardneg:changelog:end -->"
BUILD_REPORT = "hardneg_build.json"


@dataclass
class BuildReport:
    """What the changelog says about a build, read from the build report JSON.

    Read keys: `source: {id, revision}` (or `source_id` / `source_revision`, or the builder's
    `recipe.card.source_dataset|source_revision` / `recipe.sources[0].hub|path|revision`),
    `judges: [...]` (strings, `{stage, model, prompt_version}` dicts, or `{stage: model}`),
    rows per config in `rows` / `counts` / `configs` (`{config: n}`)."""

    source_id: str | None = None
    source_revision: str | None = None
    judges: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    path: Path | None = None  # where it was read from

    @classmethod
    def read(cls, path: Path) -> BuildReport:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise HubPushError(f"{path} is not valid JSON ({err}); fix or regenerate the build report.") from err
        source = data.get("source") or {}
        if isinstance(source, str):
            source = {"id": source}
        recipe = data.get("recipe") or {}
        card = recipe.get("card") or {}
        first_source = (recipe.get("sources") or [{}])[0]
        judges = data.get("judges") or []
        if isinstance(judges, dict):
            judges = [f"{stage}: {model}" for stage, model in judges.items()]
        rows = data.get("rows") or data.get("counts") or data.get("configs") or {}
        try:
            rows = {str(name): int(n) for name, n in rows.items()}
        except (TypeError, ValueError, AttributeError) as err:
            raise HubPushError(f"{path}: rows per config must be a {{config: count}} mapping ({err}).") from err
        return cls(
            source_id=source.get("id") or data.get("source_id") or card.get("source_dataset")
            or first_source.get("hub") or first_source.get("path"),
            source_revision=source.get("revision") or data.get("source_revision") or card.get("source_revision")
            or first_source.get("revision"),
            judges=[_judge_name(j) for j in judges],
            rows=rows,
            path=path,
        )


def _judge_name(judge: str | dict) -> str:
    if isinstance(judge, str):
        return judge
    name = f"{judge.get('stage', 'judge')}: {judge.get('model', 'unknown model')}"
    return name + (f" (prompt {judge['prompt_version']})" if judge.get("prompt_version") else "")


def read_card_configs(readme: Path) -> dict[str, list[str]]:
    """config name -> data file patterns, from the card's YAML `configs:`."""
    text = readme.read_text(encoding="utf-8")
    if not text.startswith("---"):
        raise HubPushError(f"{readme} has no YAML front matter; the builder writes `configs:` there.")
    meta = yaml.safe_load(text.split("\n---", 1)[0][3:]) or {}
    configs = meta.get("configs")
    if not configs:
        raise HubPushError(f"{readme} lists no `configs:` in its YAML front matter; nothing says what to load.")
    out: dict[str, list[str]] = {}
    for entry in configs:
        data_files = entry.get("data_files") or []
        if isinstance(data_files, (str, dict)):
            data_files = [data_files]
        patterns: list[str] = []
        for item in data_files:  # "pattern" | {split, path: pattern | [patterns]}
            paths = item if isinstance(item, str) else item["path"]
            patterns += [paths] if isinstance(paths, str) else list(paths)
        if not patterns:
            raise HubPushError(f"Config {entry['config_name']!r} in {readme} has no data_files.")
        out[entry["config_name"]] = patterns
    return out


def config_files(configs: dict[str, list[str]], paths: list[str]) -> dict[str, list[str]]:
    """For each config, the paths (of `paths`) its data_files patterns match."""
    return {
        name: sorted(p for p in paths if any(fnmatch.fnmatchcase(p, pattern) for pattern in patterns))
        for name, patterns in configs.items()
    }


def count_rows(folder: Path, files_per_config: dict[str, list[str]], report: BuildReport) -> dict[str, int]:
    """Rows per config from the parquet footers, checked against the build report."""
    counts = {}
    for name, files in files_per_config.items():
        if not files:
            raise HubPushError(f"Config {name!r} of {folder / 'README.md'} matches no file in {folder}; rebuild it.")
        counts[name] = sum(pq.ParquetFile(folder / f).metadata.num_rows for f in files if f.endswith(".parquet"))
        if name in report.rows and report.rows[name] != counts[name]:
            raise HubPushError(
                f"{report.path} says config {name!r} has {report.rows[name]} rows but its parquet files "
                f"hold {counts[name]}; the folder and its report disagree, rebuild before pushing."
            )
    return counts


def changelog_entry(version: str | None, report: BuildReport, counts: dict[str, int], when: datetime) -> str:
    title = f"### {version} ({when:%Y-%m-%d})" if version else f"### untagged build ({when:%Y-%m-%d %H:%M} UTC)"
    source = f"`{report.source_id or 'unknown'}`"
    if report.source_revision:
        source += f" @ `{report.source_revision}`"
    rows = ", ".join(f"`{name}` {n:,}" for name, n in counts.items())
    return "\n".join(
        [title, f"- source: {source}", f"- judges: {', '.join(report.judges) or 'none recorded'}", f"- rows: {rows}"]
    )


def changelog_entries(card: str | None) -> list[str]:
    """The `### ...` entries between the changelog markers of a card (none if no markers)."""
    if not card or CHANGELOG_START not in card or CHANGELOG_END not in card:
        return []
    body = card.split(CHANGELOG_START, 1)[1].split(CHANGELOG_END, 1)[0]
    entries = ["### " + chunk.strip() for chunk in ("\n" + body).split("\n### ")[1:]]
    return [e for e in entries if e.strip() != "###"]


def merge_changelog(local_card: str, remote_card: str | None, entry: str) -> str:
    """The local card with its changelog = this entry, then every earlier entry (Hub's first)."""
    seen, entries = set(), []
    for candidate in [entry, *changelog_entries(remote_card), *changelog_entries(local_card)]:
        heading = candidate.splitlines()[0]
        if heading not in seen:
            seen.add(heading)
            entries.append(candidate)
    block = f"{CHANGELOG_START}\n" + "\n\n".join(entries) + f"\n{CHANGELOG_END}"
    if CHANGELOG_START in local_card and CHANGELOG_END in local_card:
        before = local_card.split(CHANGELOG_START, 1)[0]
        after = local_card.split(CHANGELOG_END, 1)[1]
        return before + block + after
    return local_card.rstrip("\n") + "\n\n## Changelog\n\n" + block + "\n"


def push_dataset(
    folder: str | Path,
    repo_id: str,
    *,
    version: str | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    revision: str = "main",
    large_upload_bytes: int = LARGE_UPLOAD_BYTES,
    build_report: str | Path | None = None,
) -> PushResult:
    """Push the dataset folder to `repo_id` (a dataset repo) as one commit; tag it `version`.

    `build_report` names the build report when it is not `<folder>/hardneg_build.json` (the
    builder may keep it beside its judgment store); without any, rows are counted from parquet."""
    folder = Path(folder)
    readme = folder / "README.md"
    if not readme.is_file():
        raise HubPushError(f"{folder} has no README.md; push the builder's output folder.")
    token = resolve_token(token)
    check_version(version)
    configs = read_card_configs(readme)
    files = local_files(folder)
    report_path = Path(build_report) if build_report is not None else folder / BUILD_REPORT
    if build_report is not None and not report_path.is_file():
        raise HubPushError(f"Build report {report_path} does not exist; pass the report the build printed.")
    report = BuildReport.read(report_path) if report_path.is_file() else BuildReport()
    data_per_config = config_files(configs, list(files))
    counts = count_rows(folder, data_per_config, report)
    assert_no_token(files, token)  # before anything reaches the Hub

    api = HfApi(token=token)
    ensure_tag_free(api, repo_id, "dataset", version)
    head = prepare_repo(api, repo_id, "dataset", private, revision)
    on_hub = remote_files(api, repo_id, "dataset", head)
    stale = [p for paths in config_files(configs, on_hub).values() for p in paths if p not in files]

    remote_card = read_remote_text(api, repo_id, "dataset", "README.md", head) if "README.md" in on_hub else None
    entry = changelog_entry(version, report, counts, datetime.now(UTC))
    card = merge_changelog(readme.read_text(encoding="utf-8"), remote_card, entry)
    upload: dict[str, Path | bytes] = {**files, "README.md": card.encode("utf-8")}
    assert_no_token({"README.md": upload["README.md"]}, token)  # the merged card, too

    message = commit_message or f"hardneg build {version or '(untagged)'}: " + ", ".join(
        f"{name} {n} rows" for name, n in counts.items()
    )
    data_paths = sorted({p for paths in data_per_config.values() for p in paths})
    large = sum(files[p].stat().st_size for p in data_paths) > large_upload_bytes
    if large:
        logger.info("Large build: uploading %d data files of %s resumably first", len(data_paths), folder)
        head = upload_resumable(
            api, repo_id, "dataset", folder, data_paths, message=message, revision=revision, parent_commit=head
        )
        upload = {p: src for p, src in upload.items() if p not in data_paths}
    result = commit_and_tag(
        api,
        repo_id,
        "dataset",
        files=upload,
        deletions=stale,
        message=message,
        revision=revision,
        parent_commit=head,
        version=version,
    )
    if large:
        result.uploaded = sorted({*result.uploaded, *data_paths})
    return result


def main(argv: list[str] | None = None) -> int:
    """`python -m builders.output.publish <folder> <org/name> --version v1.0 [--private] ...`"""
    parser = argparse.ArgumentParser(prog="python -m builders.output.publish", description=push_dataset.__doc__)
    parser.add_argument("folder", type=Path, help="the build's output folder (Hub layout)")
    parser.add_argument("repo_id", help="dataset repo, e.g. org/rlhn-680k")
    add_push_options(parser, "build")
    parser.add_argument("--build-report", type=Path, help="build report JSON when not in the folder")
    args = parser.parse_args(argv)
    try:
        result = push_dataset(args.folder, args.repo_id, build_report=args.build_report, **push_options(args))
    except HubPushError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{result.summary()}; deleted {len(result.deleted)} stale file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
