"""Push a trained model folder to the Hub as one commit, tagged with its version.

The trainers save a sentence-transformers folder with its generated `README.md` card and the
`training_config.yaml` of the run. For LoRA runs there is also the PEFT adapter alone, in
`adapter/`, and the merged weights (adapter folded into the base) either at the folder root (what
`trainers/embedder/model.py` and `trainers/reranker/model.py` write) or in a `merged/` subfolder. On the Hub
the merged weights sit at the repo root, so `SentenceTransformer("org/model")` loads them, and
the adapter goes under `adapter/`:

    model_dir/** (merged or full weights at the root, adapter/ beside) -> ** as is
    model_dir/merged/**                                                -> ** (repo root)
    model_dir/adapter/**                                               -> adapter/**
    model_dir/README.md, training_config.yaml                          -> README.md, training_config.yaml

With `merged/`, the root card and training config of `model_dir` win over copies inside it. Files on the
Hub that this model no longer has are deleted in the same commit, so a version is exactly the
pushed folder. Same version rule as datasets: an existing tag is never overwritten, checked
before anything is uploaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from huggingface_hub import HfApi

from builders.output.hub import (
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
    remote_files,
    resolve_token,
)

CARD = "README.md"
TRAINING_CONFIG = "training_config.yaml"
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def model_repo_layout(model_dir: Path) -> dict[str, Path]:
    """Path in the repo -> local file, per the layout above; checked for card, config and weights."""
    merged, adapter = model_dir / "merged", model_dir / "adapter"
    if merged.is_dir():
        layout = dict(local_files(merged))
        layout.update({f"adapter/{p}": src for p, src in local_files(adapter).items()} if adapter.is_dir() else {})
        root = {p: src for p, src in local_files(model_dir).items() if not p.startswith(("merged/", "adapter/"))}
        layout.update(root)
    else:
        layout = local_files(model_dir)
    for required, what in ((CARD, "model card"), (TRAINING_CONFIG, "training config")):
        if required not in layout:
            raise HubPushError(f"{model_dir} has no {required} ({what}); the trainer writes it next to the weights.")
    root_weights = [p for p in layout if "/" not in p and p.endswith(WEIGHT_SUFFIXES)]
    if not root_weights and any(p.startswith("adapter/") for p in layout):
        raise HubPushError(
            f"{model_dir} has adapter/ but no merged weights (at its root or in merged/): save the merged "
            "model too (merge_on_save), so that SentenceTransformer(repo) loads it without PEFT."
        )
    if not root_weights or not ({"modules.json", "config.json"} & set(layout)):
        raise HubPushError(
            f"{model_dir} has no weights + modules.json/config.json at its root (or in merged/); "
            "save the model with SentenceTransformer.save() before pushing."
        )
    return layout


def push_model(
    model_dir: str | Path,
    repo_id: str,
    *,
    version: str | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    revision: str = "main",
) -> PushResult:
    """Push the model folder to `repo_id` (a model repo) as one commit; tag it `version`."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise HubPushError(f"{model_dir} is not a folder; pass the trainer's output folder.")
    token = resolve_token(token)
    check_version(version)
    layout = model_repo_layout(model_dir)
    assert_no_token(layout, token)

    api = HfApi(token=token)
    ensure_tag_free(api, repo_id, "model", version)
    head = prepare_repo(api, repo_id, "model", private, revision)
    stale = [p for p in remote_files(api, repo_id, "model", head) if p not in layout and p != ".gitattributes"]
    kind = "LoRA (merged + adapter)" if "adapter/adapter_config.json" in layout else "model"
    message = commit_message or f"hardneg {kind} {version or '(untagged)'}"
    return commit_and_tag(
        api,
        repo_id,
        "model",
        files=dict(layout),
        deletions=stale,
        message=message,
        revision=revision,
        parent_commit=head,
        version=version,
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m trainers.publish <model_dir> <org/name> --version v1.0 [--private]`"""
    parser = argparse.ArgumentParser(prog="python -m trainers.publish", description=push_model.__doc__)
    parser.add_argument("model_dir", type=Path, help="the trainer's output folder")
    parser.add_argument("repo_id", help="model repo, e.g. org/minilm-rlhn")
    add_push_options(parser, "model")
    args = parser.parse_args(argv)
    try:
        result = push_model(args.model_dir, args.repo_id, **push_options(args))
    except HubPushError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
