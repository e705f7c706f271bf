"""The generated dataset card (README.md of the output folder).

``render_dataset_card(info)`` fills ``templates/dataset_card.md.j2`` from a ``DatasetCardInfo``:
YAML metadata (license inherited from the source, task categories, ``dataset_info`` and the
``configs:`` list, see ``builders.output.dataset_info``),
source and revision, sources kept, judges and prompt versions per stage, counts per subset
and technique, the command that reproduces the build, an empty ``## Changelog`` between the
two markers (the publish step fills it), and citations. It is generic over
``MethodResult``s: every method (RLHN, ARHN, CLEAR, PercPos) gets its own section with its
judges and counters, side by side, without template changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import yaml

from builders.judges.ledger import CostLedger
from builders.methods.base import MethodResult
from cards.citations import CITATIONS

CHANGELOG_START = "<!-- hardneg:changelog:start -->"
CHANGELOG_END = "<!-- hardneg:changelog:end -->"

@dataclass
class DatasetCardInfo:
    pretty_name: str
    license: str
    configs: list[dict]  # README `configs:` entries (writers.configs_yaml_entries, fingerprinted by output.dataset_info)
    results: list[MethodResult]
    command: str
    source_datasets: list[str] = field(default_factory=list)  # Hub ids, or descriptions of local files
    source_revision: str | None = None
    sources_kept: list[str] = field(default_factory=list)  # subset names in the output
    rows_per_config: dict[str, int] = field(default_factory=dict)
    validation: dict = field(default_factory=dict)  # ValidationReport.to_dict()
    empty_configs: list[str] = field(default_factory=list)  # configs left without rows (not written)
    language: list[str] = field(default_factory=lambda: ["en"])
    citations: list[str] = field(default_factory=list)  # keys of cards/citations.py (the build: its methods' + the data's)
    task_categories: list[str] = field(default_factory=lambda: ["text-retrieval"])
    ledger: CostLedger | None = None  # what the judges cost (actual requests, tokens, retries, failures, wall time, USD)
    method_settings: dict[str, dict] = field(default_factory=dict)  # method -> the settings its card section states
    dataset_info: dict | list | None = None  # YAML `dataset_info` as push_to_hub writes it (builders.output.dataset_info)
    see_also: list[str] = field(default_factory=list)  # links listed under "See also" (recipe `card.see_also`)


# The side-by-side comparison: per method and subset, these counters (per query where it says so).
COMPARE = ("positives_added", "negatives_removed", "hallucinated_snippets", "parse_failures", "judge_calls",
           "prompt_tokens", "completion_tokens")


def _parse_failures(counters) -> float:
    """Unparseable judge answers, whatever the method calls them (RLHN: unparsed_stage*, ARHN: parse_failures)."""
    if "parse_failures" in counters:
        return counters["parse_failures"]
    return sum(v for k, v in counters.items() if k.startswith("unparsed_stage"))


def _rlhn_changes(result: MethodResult, subset: str) -> tuple[float, float]:
    """RLHN's positives added and negatives removed: its `rlhn` config against `default`."""
    c = result.stats[subset]
    return (c.get("rlhn:positives", 0) - c.get("default:positives", 0), c.get("default:negatives", 0) - c.get("rlhn:negatives", 0))


def comparison_rows(results: list[MethodResult]) -> list[list[str]]:
    """[method, subset, rows, positives added (per query), negatives removed (per query),
    hallucinated snippets, parse failures, judge calls, prompt tokens, completion tokens]."""
    out = []
    for r in results:
        for subset in sorted(r.stats):
            c = r.stats[subset]
            n = c.get("rows_in", 0)
            added, removed = _rlhn_changes(r, subset) if r.name == "rlhn" else (c.get("positives_added", 0), c.get("negatives_removed", 0))
            per = (lambda x: f"{_fmt(x)} ({x / n:.2f})") if n else (lambda x: _fmt(x))
            calls = sum(v for k, v in c.items() if k.startswith("judge_calls"))
            p_tok = sum(v for k, v in c.items() if k.startswith("prompt_tokens"))
            c_tok = sum(v for k, v in c.items() if k.startswith("completion_tokens"))
            out.append([r.name, subset, _fmt(n), per(added), per(removed), _fmt(c.get("hallucinated_snippets", 0)),
                        _fmt(_parse_failures(c)), _fmt(calls), _fmt(p_tok), _fmt(c_tok)])
    return out


def ledger_rows(ledger: CostLedger | None) -> list[list[str]]:
    if ledger is None or not ledger.rows:
        return []
    rows = []
    for row in list(ledger.rows.values()) + [ledger.total()]:
        usd = ledger.total_usd() if row.stage == "all" else ledger.usd(row)
        rows.append([row.stage, f"`{row.judge}`" if row.judge != "all" else "all", row.endpoint, _fmt(row.requests),
                     _fmt(row.answered), _fmt(row.prompt_tokens), _fmt(row.completion_tokens), _fmt(row.retries),
                     _fmt(row.failures), _fmt(row.lost), "n/a" if usd is None else f"{usd:,.4f}"])
    return rows


def size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return name
    return "10M<n<100M"


def card_metadata(info: DatasetCardInfo) -> dict:
    meta = {
        "license": info.license,
        "language": info.language,
        "task_categories": info.task_categories,
        "tags": ["hard-negatives", "false-negatives", "llm-judge", "hardneg", *sorted({r.name for r in info.results})],
        "size_categories": [size_category(max(info.rows_per_config.values(), default=0))],
        "pretty_name": info.pretty_name,
    }
    if info.dataset_info:
        meta["dataset_info"] = info.dataset_info
    meta["configs"] = info.configs
    hub_sources = [s for s in info.source_datasets if "/" in s and not s.startswith((".", "/")) and " " not in s]
    if hub_sources:
        meta["source_datasets"] = hub_sources
    return meta


# Columns a reader looks for first; any other counter follows in alphabetical order.
FIRST_COLUMNS = (
    "rows_in", "positives_in", "negatives_in", "negatives_not_judged",
    "judged_stage1", "flagged_stage1", "unparsed_stage1", "failed_stage1",
    "judged_stage2", "flagged_stage2", "unparsed_stage2", "failed_stage2",
    "parse_failures", "rows_with_false_negatives", "false_negatives", "rows_over_max_flagged",
    "rows_unparsed", "rows_failed",
)
COST_PREFIXES = ("judge_calls", "prompt_tokens", "completion_tokens")


def _column_order(name: str) -> tuple:
    return (FIRST_COLUMNS.index(name) if name in FIRST_COLUMNS else len(FIRST_COLUMNS), name)


def _stat_tables(result: MethodResult) -> tuple[list[str], list[list], list[str], list[list], list[str], list[list]]:
    """(counts columns, rows per subset), (technique columns, rows per technique x subset),
    (cost columns, rows per subset)."""
    general: set[str] = set()
    per_tech: dict[str, set] = {}
    for counters in result.stats.values():
        for k in counters:
            if ":" in k:
                tech, what = k.split(":", 1)
                per_tech.setdefault(tech, set()).add(what)
            else:
                general.add(k)
    cost = sorted((k for k in general if k.startswith(COST_PREFIXES)), key=lambda k: (k.rsplit("_", 1)[-1], k))
    general = sorted((k for k in general if k not in cost), key=_column_order)
    subsets = sorted(result.stats)
    g_rows = [[s] + [_fmt(result.stats[s].get(c, 0)) for c in general] for s in subsets]
    c_rows = [[s] + [_fmt(result.stats[s].get(c, 0)) for c in cost] for s in subsets]
    t_cols = sorted({w for ws in per_tech.values() for w in ws}, key=lambda w: (w != "rows", w != "positives", w != "negatives", w))
    t_rows = []
    for tech in result.configs or per_tech:
        for s in subsets:
            t_rows.append([tech, s] + [_fmt(result.stats[s].get(f"{tech}:{c}", 0)) for c in t_cols])
    return general, g_rows, t_cols, t_rows, cost, c_rows


def _fmt(v) -> str:
    return f"{v:,}" if isinstance(v, int) else f"{v:,.2f}" if isinstance(v, float) else str(v)


def render_dataset_card(info: DatasetCardInfo) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    methods = []
    for r in info.results:
        general, g_rows, t_cols, t_rows, cost, c_rows = _stat_tables(r)
        own = info.method_settings.get(r.name, {})
        methods.append({"name": r.name, "judges": r.judges, "configs": list(r.configs), "general": general, "g_rows": g_rows,
                        "settings": own,
                        "t_cols": t_cols, "t_rows": t_rows, "cost": cost, "c_rows": c_rows})
    front = yaml.safe_dump(card_metadata(info), sort_keys=False, allow_unicode=True, width=1000).strip()
    default_config = info.configs[0]["config_name"] if info.configs else "default"
    return env.get_template("dataset_card.md.j2").render(
        front_matter=front,
        info=info,
        methods=methods,
        default_config=default_config,
        citations=[CITATIONS[c] for c in dict.fromkeys(info.citations)],
        comparison=comparison_rows(info.results),
        ledger_rows=ledger_rows(info.ledger),
        tgi_judges=sorted({j.model for r in info.results for j in r.judges if "tgi" in j.backend.split("+")}),
        unpriced=info.ledger.unpriced() if info.ledger else [],
        changelog_start=CHANGELOG_START,
        changelog_end=CHANGELOG_END,
    )


def write_dataset_card(folder: str | Path, info: DatasetCardInfo) -> Path:
    path = Path(folder) / "README.md"
    path.write_text(render_dataset_card(info), encoding="utf-8")
    return path
