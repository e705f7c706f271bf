"""Generated model cards for trained embedders and rerankers.

Trainers fill a :class:`ModelCardInfo` and call :func:`write_model_card`, which renders
``cards/templates/model_card.md.j2`` into ``<model_dir>/README.md``: YAML metadata (base_model,
datasets, library_name, pipeline_tag, tags, license), the base model, the dataset id with
config and revision, the loss with its parameters and citation, hyperparameters, hardware and
training time, the evaluation table, framework versions, the citations of the data-refinement
methods the dataset was built with, and a usage snippet for the model kind.

The refinement method is read from the dataset config / id (``rlhn``, ``hn_remove``, ``remove``
-> RLHN; ``arhn*`` -> ARHN; ``clear*`` -> CLEAR; ``percpos`` / ``topk`` -> NV-Retriever's
TopK-PercPos), or given explicitly in ``methods``.
"""

from __future__ import annotations

import importlib.metadata
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cards.citations import CITATIONS

TEMPLATE_DIR = Path(__file__).parent / "templates"

# The methods a training set can come from (display name) -> their entry in cards/citations.py.
METHOD_CITATIONS = {
    "RLHN": CITATIONS["rlhn"],
    "ARHN": CITATIONS["arhn"],
    "CLEAR": CITATIONS["clear"],
    "TopK-PercPos": CITATIONS["nv-retriever"],
}

_METHOD_PATTERNS = (
    ("RLHN", re.compile(r"rlhn|hn[_-]remove|(^|[/_-])remove($|[/_-])")),
    ("ARHN", re.compile(r"arhn|prhn")),
    ("CLEAR", re.compile(r"clear")),
    ("TopK-PercPos", re.compile(r"percpos|topk")),
)

# short names the trainers accept for bundled models -> their Hub ids (for base_model metadata)
HUB_IDS = {"minilm": "sentence-transformers/all-MiniLM-L6-v2"}
PIPELINE_TAG = {"embedder": "sentence-similarity", "cross_encoder": "text-ranking", "llm_reranker": "text-ranking"}
LIBRARY = {"embedder": "sentence-transformers", "cross_encoder": "sentence-transformers",
           "llm_reranker": "transformers"}
FRAMEWORKS = ("torch", "transformers", "sentence-transformers", "accelerate", "peft", "datasets",
              "huggingface-hub", "deepspeed")


@dataclass
class ModelCardInfo:
    kind: str  # "embedder" | "cross_encoder" | "llm_reranker"
    base_model: str
    dataset: str
    loss: str
    dataset_config: str | None = None
    dataset_revision: str | None = None
    loss_config: dict = field(default_factory=dict)
    loss_citation: str = ""
    hyperparameters: dict = field(default_factory=dict)
    hardware: str = ""
    train_seconds: float | None = None
    # {metric: value} for one system, or {system: {metric: value}} (first stage vs reranked)
    metrics: dict = field(default_factory=dict)
    eval_dataset: str | None = None
    license: str = "apache-2.0"
    head: str | None = None  # llm_reranker: causal_yes_no | sequence_classification
    model_id: str | None = None  # Hub id for the usage snippet; default: the model folder
    methods: list[str] | None = None  # refinement methods; None = read from the dataset names
    tags: list[str] = field(default_factory=list)
    see_also: list[str] = field(default_factory=list)  # links listed under "See also" (config `card_see_also`)


def detect_methods(dataset: str, dataset_config: str | None) -> list[str]:
    text = f"{dataset or ''}/{dataset_config or ''}".lower()
    return [name for name, pattern in _METHOD_PATTERNS if pattern.search(text)]


def framework_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in FRAMEWORKS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def metric_table(metrics: dict) -> tuple[list[str], list[tuple[str, list[float]]]]:
    """(metric names, rows of (system, values)); accepts flat or per-system metrics."""
    if not metrics:
        return [], []
    systems = metrics if all(isinstance(v, dict) for v in metrics.values()) else {"this model": metrics}
    names = list(next(iter(systems.values())))
    return names, [(s, [float(m[n]) for n in names]) for s, m in systems.items()]


def _is_local(path: str) -> bool:
    return bool(path) and (path.startswith(("/", ".", "~")) or Path(path).exists())


def card_metadata(info: ModelCardInfo, methods: list[str]) -> dict:
    tags = [info.kind.replace("_", "-"), "hardneg", *(m.lower() for m in methods), *info.tags]
    if info.kind == "embedder":
        tags += ["sentence-transformers", "feature-extraction"]
    else:
        tags += ["reranker"]
    if info.hyperparameters.get("lora_r", 0):
        tags.append("peft")
    meta: dict = {"license": info.license, "library_name": LIBRARY[info.kind],
                  "pipeline_tag": PIPELINE_TAG[info.kind], "tags": list(dict.fromkeys(tags))}
    base = HUB_IDS.get(info.base_model, info.base_model)
    if base and not _is_local(base):
        meta["base_model"] = base
    if info.dataset and not _is_local(info.dataset):
        meta["datasets"] = [info.dataset]
    return meta


def render_model_card(info: ModelCardInfo, model_dir: str | Path | None = None) -> str:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    methods = info.methods if info.methods is not None else detect_methods(info.dataset, info.dataset_config)
    unknown = [m for m in methods if m not in METHOD_CITATIONS]
    if unknown:
        raise ValueError(f"no citation for method(s) {unknown}; known: {sorted(METHOD_CITATIONS)}")
    env = Environment(loader=FileSystemLoader(TEMPLATE_DIR), undefined=StrictUndefined,
                      keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    metric_names, metric_rows = metric_table(info.metrics)
    minutes = None if info.train_seconds is None else round(info.train_seconds / 60, 1)
    return env.get_template("model_card.md.j2").render(
        info=info,
        metadata=yaml.safe_dump(card_metadata(info, methods), sort_keys=False, allow_unicode=True).strip(),
        methods=methods,
        method_citations=[METHOD_CITATIONS[m] for m in methods],
        metric_names=metric_names,
        metric_rows=metric_rows,
        hyperparameters={k: v for k, v in info.hyperparameters.items() if v not in (None, "", [])},
        versions=framework_versions(),
        train_minutes=minutes,
        model_ref=info.model_id or (str(model_dir) if model_dir else "path/to/model"),
    )


def write_model_card(model_dir: str | Path, info: ModelCardInfo) -> Path:
    path = Path(model_dir) / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_model_card(info, model_dir), encoding="utf-8")
    return path
