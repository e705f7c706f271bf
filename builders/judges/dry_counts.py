"""What ``--dry-run`` counts for any judge before a call is made: prompt tokens (the judge's
tokenizer, ``dry_run.tokenizer``, or characters / 4, said in the printout) and the judge's input
limit (``builders.judges.shorten``'s rule). Every stage's prompt tokens are what will be sent: a
prompt over the limit is counted at the limit. Each method's own estimates (which prompts, with
which assumptions) are in its ``dry_run`` module: ``builders/methods/<method>/dry_run.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from builders.judges.endpoints.chat import load_tokenizer
from builders.judges.endpoints.spec import EndpointSpec
from builders.judges.ledger import chat_token_counter

Count = Callable[..., int]  # (messages, continuation="") -> prompt tokens
APPROXIMATE = "≈ characters / 4 (no tokenizer named: set dry_run.tokenizer)"


# ---------------------------------------------------------------- counting
named_tokenizer = functools.lru_cache(maxsize=8)(load_tokenizer)  # loaded once per dry run's stages


def judge_tokenizer(spec: EndpointSpec):
    """The judge's tokenizer without loading its weights: ``tokenizer`` when named; for a
    local judge its model (a GGUF file's tokenizer is read from the file), else None."""
    if spec.tokenizer:
        return named_tokenizer(spec.tokenizer)
    return _local_tokenizer(spec.model, spec.gguf_file) if spec.kind == "local" else None


@functools.lru_cache(maxsize=8)
def _local_tokenizer(model: str | None, gguf_file: str | None):
    from transformers import AutoTokenizer

    if model is None or gguf_file:
        from builders.judges.endpoints.local import SMOLLM2_GGUF, bundled_smollm2

        path = Path(gguf_file) if gguf_file and Path(gguf_file).is_file() else None
        if path is None and model is None and gguf_file in (None, SMOLLM2_GGUF):
            path = bundled_smollm2()
        if path is not None:
            return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        return AutoTokenizer.from_pretrained(model, gguf_file=gguf_file)
    return AutoTokenizer.from_pretrained(model)


def prompt_counter(dry, spec: EndpointSpec) -> tuple[str, Count]:
    """How a judge's prompts are counted (``dry``: the recipe's ``dry_run:`` section): its
    ``tokenizer``, else the judge's own; without either, characters / 4 (said in the printout)."""
    tok = named_tokenizer(dry.tokenizer) if dry.tokenizer else judge_tokenizer(spec)
    if tok is not None:
        return "tokenizer", chat_token_counter(tok)

    def approximate(messages, continuation: str = "") -> int:
        return len("\n".join(m["content"] for m in messages) + continuation) // 4
    return APPROXIMATE, approximate


# ---------------------------------------------------------------- input limits
def dry_input_limit(specs: list[EndpointSpec], max_new_tokens: int) -> int | None:
    """A judge's input limit for the dry run (``builders.judges.shorten``'s rule: the smallest of its
    endpoints'): ``max_input_tokens`` when set, a local model's context minus ``max_new_tokens``
    (its config, no weights), a server's ``/info`` / ``/v1/models`` when it answers; else None."""
    from builders.judges.endpoints.local import read_context_length

    limits = []
    for spec in specs:
        new = min(max_new_tokens, spec.max_new_tokens) if spec.max_new_tokens is not None else max_new_tokens
        if spec.max_input_tokens is not None:
            limits.append(spec.max_input_tokens)
        elif spec.kind == "local":
            context = read_context_length(spec.model, spec.gguf_file)
            limits.append(None if context is None else context - new)
        else:
            limits.append(asyncio.run(_server_limit(spec, new)))
    known = [x for x in limits if x is not None]
    return min(known) if known else None


async def _server_limit(spec: EndpointSpec, max_new_tokens: int) -> int | None:
    from builders.judges.endpoints import make_backend

    backend = make_backend(dataclasses.replace(spec, tokenizer=None, timeout_s=min(spec.timeout_s, 10.0)))
    try:
        return await backend.input_limit(max_new_tokens)
    except Exception:  # noqa: BLE001 - a dry run reports what it can; the build reads the limit again
        return None
    finally:
        await backend.aclose()


@dataclass
class LimitCheck:
    """A stage's prompts against its judge's input limit."""

    limit: int | None
    counts: list[int]  # tokens per prompt as built
    sent: list[int]  # as they will be sent: a prompt over the limit is shortened to it

    @property
    def over(self) -> list[int]:
        return [] if self.limit is None else [c for c in self.counts if c > self.limit]

    def line(self) -> str:
        if self.limit is None:
            return "  input limit unknown (set max_input_tokens on the endpoint): prompts are sent as they are"
        return (f"  input limit {self.limit:,} tokens: {len(self.over)} of {len(self.counts)} prompts over it would be "
                f"shortened (~{sum(c - self.limit for c in self.over):,} tokens cut; builders.judges.shorten)")

    def as_dict(self) -> dict:
        if self.limit is None:
            return {"input_limit": None, "prompts_over_limit": None}
        return {"input_limit": self.limit, "prompts_over_limit": len(self.over),
                "tokens_over_limit": sum(c - self.limit for c in self.over)}


def check_limit(specs: list[EndpointSpec], counts: list[int], max_new_tokens: int) -> LimitCheck:
    limit = dry_input_limit(specs, max_new_tokens)
    return LimitCheck(limit, counts, counts if limit is None else [min(c, limit) for c in counts])
