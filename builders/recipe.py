"""A YAML recipe names a whole build; command-line overrides change any key.

    sources: [{path: builders/data/sample/retrieval-nq.jsonl, subset: nq}]
    validation: {policy: skip}
    judges:
      stage1: {kind: local}
      stage2: {kind: openai, url: https://api.openai.com, model: gpt-4o, api_key_env: OPENAI_API_KEY}
    rlhn: {negatives_per_prompt: 4, refine: {max_flagged: 8}}
    output: {folder: out/sample, rows_per_shard: 100000}
    card: {license: mit, pretty_name: ...}

Overrides: ``--set rlhn.refine.max_flagged=4`` or ``--rlhn.refine.max_flagged 4``; values are
read as YAML (``null``, ``4``, ``[a, b]``, ``true``).

Method sections (``rlhn:``, ``arhn:``, ``prhn:``, ``clear:``, ``percpos:``) are the ``Settings`` of the
methods in ``builders.methods.METHODS``, keyed by each method's ``NAME``; ``selected`` says which run.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

import builders.methods
from builders.judges.endpoints.spec import EndpointSpec
from builders.judges.fleet import FleetConfig
from builders.methods.base import BuildError
from builders.sources.readers import SourceConfig

# keys a recipe may still carry from earlier versions -> what to write instead
RENAMED = {
    "rlhn.refine.untouched_subsets": "rlhn.never_edit_subsets (the one never-edit rule every method follows)",
}


@dataclass
class ValidationConfig:
    policy: typing.Literal["skip", "fail", "repair"] = "skip"


# One endpoint, or a LIST of endpoints serving the same judge (a fleet: least-loaded routing).
JudgeSpec = EndpointSpec | list[EndpointSpec]


@dataclass
class JudgesConfig:
    stage1: JudgeSpec = field(default_factory=EndpointSpec)  # RLHN stage 1; also CLEAR's judge
    stage2: JudgeSpec | None = None  # None: stage 1's verdict is final (single-judge build)
    arhn_extract: JudgeSpec | None = None  # ARHN/PRHN stage 1; None: stage1's
    arhn_rank: JudgeSpec | None = None  # ARHN/PRHN stage 2; None: arhn_extract's


@dataclass
class OutputConfig:
    folder: str = "out/dataset"
    rows_per_shard: int | None = 100_000
    store: str | None = None  # judgment store (SQLite); default: .hardneg-cache/<name>/judgments.sqlite
    bge_jsonl: bool = False  # also write <folder>/bge/<config>.jsonl for FlagEmbedding
    chunk_rows: int | None = 5_000  # rows judged and written at a time (flat memory); null: all at once


@dataclass
class CardConfig:
    license: str = "other"  # inherited from the source: mit for the bundled sample, cc-by-sa-4.0 for rlhn/*
    pretty_name: str | None = None
    source_dataset: str | None = None  # e.g. cfli/bge-full-data
    source_revision: str | None = None
    language: list[str] = field(default_factory=lambda: ["en"])
    see_also: list[str] = field(default_factory=list)  # links (URLs or paths) the card lists under "See also", e.g. a results table


@dataclass
class DryRunConfig:
    stage2_share: float = 0.72  # share of queries stage 1 flags (RLHN fixtures: 36 of 50)
    tokenizer: str | None = None  # a tokenizer to count prompt tokens when the judge has none
    completion_tokens: float = 64.0  # expected completion tokens per call, for the cost estimate
    # CLEAR: run the (local, CPU) PFN retrieval so the number of score calls is exact; false: an
    # upper bound (min(top_n, max_pfn, pool) candidates scored per query), no embedder loaded
    clear_retrieval: bool = True
    answer_tokens: int = 32  # CLEAR: tokens of an answer the judge will extract (unknown before the run)
    # ARHN rank (its prompts hold stage 1's snippets, unknown before the run). Paper (ARHN, Table 4,
    # Qwen3-32B, N=10): 1.6 negatives relabeled + 2.2 filtered per query, so 3.8 of 10 negatives
    # have a snippet and nearly every query has at least one.
    arhn_rank_share: float = 0.9  # share of extracted queries with an answering negative (ranked)
    arhn_answering_share: float = 0.38  # share of a ranked query's judged negatives with a snippet
    snippet_tokens: int = 48  # tokens per snippet (one to three sentences)


@dataclass
class Recipe:
    name: str = "hardneg-build"
    sources: list[SourceConfig] = field(default_factory=list)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    judges: JudgesConfig = field(default_factory=JudgesConfig)
    # method NAME -> its Settings, for the methods the recipe names (``selected``: which run)
    methods: dict[str, object] = field(default_factory=dict)
    output: OutputConfig = field(default_factory=OutputConfig)
    card: CardConfig = field(default_factory=CardConfig)
    dry_run: DryRunConfig = field(default_factory=DryRunConfig)
    fleet: FleetConfig | None = None  # routing settings for judges given as a list of endpoints
    prices: dict | None = None  # {model id: {prompt: USD/1M tokens, completion: USD/1M tokens}}


def selected(recipe: Recipe) -> list[tuple]:
    """(method, settings) for every method the build runs, in ``METHODS`` order: the ones the
    recipe names; none named: the default method (RLHN) with its default settings."""
    named = [(m, recipe.methods[m.NAME]) for m in builders.methods.METHODS if m.NAME in recipe.methods]
    return named or [(m, m.Settings()) for m in builders.methods.METHODS if m.DEFAULT]


def settings_of(recipe: Recipe, method):
    """``method``'s settings when the build runs it, else None."""
    return next((s for m, s in selected(recipe) if m is method), None)


def judge_plan(recipe: Recipe) -> dict[str, list[EndpointSpec]]:
    """Judge name -> its endpoints, for the judges the build's methods ask."""
    out: dict[str, list[EndpointSpec]] = {}
    for method, settings in selected(recipe):
        for name, spec in method.judges(settings, recipe.judges).items():
            out.setdefault(name, judge_specs(spec))
    for name, specs in out.items():
        if not specs:
            raise BuildError(f"recipe judges.{name} is an empty list: name at least one endpoint")
    return out


def judge_specs(spec: JudgeSpec | None) -> list[EndpointSpec]:
    """A judge's endpoints as a list (one spec, or a fleet's)."""
    return [] if spec is None else list(spec) if isinstance(spec, list) else [spec]


def _build(tp, value, where: str):
    """Turn plain YAML data into the annotated type ``tp`` (dataclasses, lists, optionals)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        if len(args) > 1:  # EndpointSpec | list[EndpointSpec]: the value's shape picks the type
            listed = [a for a in args if typing.get_origin(a) is list]
            if isinstance(value, list) and listed:
                return _build(listed[0], value, where)
            plain = [a for a in args if dataclasses.is_dataclass(a)]
            return _build(plain[0], value, where) if plain and isinstance(value, dict) else value
        return _build(args[0], value, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"recipe key {where or '<root>'} must be a mapping, got {value!r}")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - names)
        renamed = [f"{where}.{k}".lstrip(".") for k in unknown if f"{where}.{k}".lstrip(".") in RENAMED]
        if renamed:
            raise ValueError("; ".join(f"recipe key {k} was renamed: write {RENAMED[k]}" for k in renamed))
        if unknown:
            raise ValueError(f"unknown recipe key(s) {', '.join(f'{where}.{k}'.lstrip('.') for k in unknown)}; known: {sorted(names)}")
        return tp(**{k: _build(hints[k], v, f"{where}.{k}".lstrip(".")) for k, v in value.items()})
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            value = [value]
        return [_build(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if tp is float and isinstance(value, int):
        return float(value)
    return value


def apply_override(data: dict, dotted: str, raw: str) -> None:
    """``data['a']['b']['c'] = yaml(raw)`` for ``dotted='a.b.c'``; list items by index (``sources.0.limit``)."""
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        if isinstance(node, list):
            node = node[int(k)]
        else:
            if not isinstance(node.get(k), (dict, list)):
                node[k] = {}
            node = node[k]
    value = yaml.safe_load(raw) if raw != "" else None
    if isinstance(node, list):
        node[int(keys[-1])] = value
    else:
        node[keys[-1]] = value


def load_recipe(path: str | Path | None, overrides: list[tuple[str, str]] = ()) -> Recipe:
    data: dict = {}
    if path is not None:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    for dotted, raw in overrides:
        apply_override(data, dotted, raw)
    _read_endpoint_files(data, Path(path).parent if path is not None else None)
    if "methods" in data:
        raise ValueError("recipe key `methods` is not a section: name each method at the top level (rlhn:, arhn:, ...)")
    sections = {m.NAME: data.pop(m.NAME) for m in builders.methods.METHODS if m.NAME in data}
    try:
        recipe = _build(Recipe, data, "")
    except ValueError as error:
        if "unknown recipe key" not in str(error):
            raise
        raise ValueError(f"{error} (method sections: {[m.NAME for m in builders.methods.METHODS]})") from None
    recipe.methods = {m.NAME: _build(m.Settings, sections[m.NAME], m.NAME) for m in builders.methods.METHODS if sections.get(m.NAME) is not None}
    return recipe


def _read_endpoint_files(data: dict, recipe_folder: Path | None) -> None:
    """A judge given as a string is a YAML/JSON file of its endpoints: one mapping, a list of
    them, or ``{endpoints: [...]}`` (a fleet kept apart from the recipe, e.g. written by the
    job that starts the servers). A relative path is read from the working directory, else
    from the recipe's folder."""
    judges = data.get("judges")
    if not isinstance(judges, dict):
        return
    for name, value in judges.items():
        if not isinstance(value, str):
            continue
        candidates = [Path(value)] if Path(value).is_absolute() else [Path(value)] + (
            [recipe_folder / value] if recipe_folder is not None else [])
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise ValueError(f"recipe key judges.{name}: endpoint file {value!r} not found "
                             f"(looked in: {', '.join(str(c) for c in candidates)})")
        with open(found, encoding="utf-8") as f:
            endpoints = yaml.safe_load(f)
        if isinstance(endpoints, dict) and set(endpoints) == {"endpoints"}:
            endpoints = endpoints["endpoints"]
        if not (isinstance(endpoints, dict) or (isinstance(endpoints, list) and endpoints
                                                and all(isinstance(e, dict) for e in endpoints))):
            raise ValueError(f"recipe key judges.{name}: {found} must hold an endpoint mapping or a non-empty "
                             f"list of them (kind, url, model, ...), got {type(endpoints).__name__}")
        judges[name] = endpoints


def recipe_to_dict(recipe: Recipe) -> dict:
    """The recipe as YAML would hold it: method sections at the top level."""
    d = dataclasses.asdict(recipe)
    methods = {m.NAME: d["methods"].get(m.NAME) for m in builders.methods.METHODS}
    d.pop("methods")
    return {**{k: v for k, v in d.items() if k not in ("output", "card", "dry_run", "fleet", "prices")}, **methods,
            **{k: d[k] for k in ("output", "card", "dry_run", "fleet", "prices")}}
