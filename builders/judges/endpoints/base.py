"""The contract every judge backend speaks (TGI ``/generate``, OpenAI-compatible chat,
in-process transformers). Method modules (RLHN, ARHN, CLEAR) build ``GenerateRequest`` /
``ScoreRequest`` objects and never see HTTP; backends turn them into one attempt each and
raise ``EndpointError`` on failure. Retries, concurrency and the durable store live in
``builders.judges.annotate``, not here.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class Constraint:
    """Constrained decoding: a regex or a JSON schema. Each backend maps it to what its
    server offers (TGI ``grammar``, OpenAI-style ``response_format``, a local logits
    processor) and says so in ``Backend.supports_constraint``."""

    kind: Literal["regex", "json"]
    value: str | dict


@dataclass(frozen=True)
class GenerateRequest:
    messages: tuple[dict, ...]  # chat messages: ({"role": "system"|"user"|"assistant", "content": str}, ...)
    max_new_tokens: int = 1024
    temperature: float = 0.1
    seed: int | None = 0
    constraint: Constraint | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class ScoreRequest:
    """Log-probabilities of a GIVEN continuation (CLEAR's answer tokens) after a prompt.
    ``messages`` render the prompt with the model's chat template; the assistant turn starts
    with ``continuation``."""

    messages: tuple[dict, ...]
    continuation: str


@dataclass
class Generation:
    text: str
    finish_reason: str  # "stop" | "length" | "eos_token" | ... as the server says
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    meta: dict = field(default_factory=dict)  # e.g. TGI x-queue-time, endpoint url


@dataclass
class TokenScore:
    text: str
    logprob: float
    start: int  # character offsets of the token inside ``continuation``
    end: int


@dataclass
class Scored:
    """What one ``Backend.score`` call gave: the continuation's token log-probabilities and what
    the call cost. The whole prompt is prefilled, so ``prompt_tokens`` is the prompt plus the
    continuation as the server counted them (its own count when it reports one, else the
    length of the token list it returned); ``completion_tokens`` the tokens it generated (TGI
    generates one, a vLLM ``max_tokens: 0`` echo and a local forward pass none)."""

    tokens: list[TokenScore]
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    meta: dict = field(default_factory=dict)  # e.g. TGI x-queue-time, endpoint url


ErrorKind = Literal["overloaded", "validation", "server", "timeout", "connection", "protocol"]


class EndpointError(Exception):
    """One failed attempt. ``retryable`` follows TGI's error contract: 429 overloaded and
    424/500/502/503/504, timeouts and dropped connections are retried with backoff; 422
    validation (and anything the server will answer the same way again) is not."""

    def __init__(self, kind: ErrorKind, message: str, status: int | None = None, retryable: bool | None = None):
        super().__init__(f"{kind} ({status}): {message}" if status else f"{kind}: {message}")
        self.kind = kind
        self.status = status
        self.message = message
        self.retryable = retryable if retryable is not None else kind in ("overloaded", "server", "timeout", "connection")


def error_for_status(status: int, message: str) -> EndpointError:
    """An HTTP status -> ``EndpointError`` per TGI's contract: 429 overloaded (retry with
    backoff); 400/422 validation (the same request fails the same way: never retried);
    401/403/404/405 protocol (wrong token, URL or server kind: not retried); 408 timeout;
    424 and 5xx server errors (bounded retries)."""
    if status == 429:
        return EndpointError("overloaded", message, status)
    if status in (400, 413, 422):
        return EndpointError("validation", message, status)
    if status in (401, 403, 404, 405):
        return EndpointError("protocol", message, status, retryable=False)
    if status == 408:
        return EndpointError("timeout", message, status)
    if status == 424 or status >= 500:
        return EndpointError("server", message, status)
    return EndpointError("validation", message, status)


class Backend(abc.ABC):
    """One endpoint (or one local model). ``model_id`` is what the judgment store records."""

    model_id: str
    supports_constraint: frozenset[str] = frozenset()  # subset of {"regex", "json"}
    concurrency: int = 1  # requests this endpoint takes in flight; the annotator's default

    @property
    def kind(self) -> str:
        """What cards and judgment rows call this backend: "tgi", "openai", "local" (the built-in
        backends set it; others are named by their class)."""
        return type(self).__name__.lower()

    @abc.abstractmethod
    async def generate(self, request: GenerateRequest) -> Generation: ...

    async def score(self, request: ScoreRequest) -> Scored:
        raise EndpointError("validation", f"{type(self).__name__} cannot score given continuations", retryable=False)

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Get ready before the first call (a fleet reads its endpoints' ``/info`` here); the
        annotator runs it while it prepares its requests."""

    def count_tokens(self, text: str) -> int | None:
        """Prompt-size estimate for ``--dry-run``; None when the backend has no tokenizer."""
        return None

    async def input_limit(self, max_new_tokens: int) -> int | None:
        """The most prompt tokens this endpoint accepts for a request that may generate
        ``max_new_tokens`` (read once from the server or the model and cached); None: unknown,
        prompts are sent as they are. ``builders.judges.shorten`` fits prompts under it."""
        return None

    def prompt_text(self, messages) -> str:
        """The text whose tokens the endpoint counts for ``messages`` (its chat rendering)."""
        from builders.judges.endpoints.chat import render_chat_prompt

        return render_chat_prompt(messages)

    async def token_spans(self, text: str) -> list[tuple[int, int]] | None:
        """``(start, end)`` character spans of the tokens the endpoint counts for ``text``, the
        special tokens it adds included (zero width), with the judge's tokenizer: a local one
        when the backend has it, else the server's tokenize route. None: it cannot tokenize."""
        return None

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        pass
