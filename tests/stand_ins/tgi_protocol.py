"""The data side of the TGI stand-in: scripted faults, the request record, the stand-in's
deterministic tokenizer and log-probabilities, and how a prompt is read from any route's body.
``tests.stand_ins.tgi_server`` re-exports all of it."""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

TOKEN_PATTERN = re.compile(r"\s?\w+|\s?[^\w\s]|\s+")
ERROR_TYPES = {429: "overloaded", 422: "validation", 424: "generation", 500: "generation"}


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour. Set exactly one of the behaviour fields (``delay_s`` may
    accompany any of them or stand alone as a slow but otherwise normal answer)."""

    status: int | None = None  # reply with this status and a TGI error body
    message: str | None = None  # the error body's "error" text (a default per status otherwise)
    text: str | None = None  # a 200 reply whose generated text is this (e.g. garbage)
    raw_body: bytes | None = None  # a 200 reply whose body is these bytes (e.g. not JSON)
    drop: bool = False  # close the connection without any reply
    delay_s: float = 0.0  # wait this long first (past the client's timeout -> a timeout)


OVERLOADED = Fault(status=429)
UNAVAILABLE = Fault(status=503)
VALIDATION = Fault(status=422)
DROP = Fault(drop=True)
GARBAGE = Fault(text="<<the judge lost the thread>> %$#@")


@dataclass
class FaultRule:
    """Apply ``fault`` to the request with index ``at`` (0-based, over all requests), or to the
    first ``times`` requests whose prompt contains ``match`` (``times=None``: all of them)."""

    fault: Fault
    at: int | None = None
    match: str | None = None
    times: int | None = 1
    used: int = 0


@dataclass
class RecordedRequest:
    index: int
    method: str
    path: str
    body: dict | None
    prompt: str | None
    headers: dict  # lower-cased names
    status: int | None = None  # what the stand-in answered (None: dropped)
    fault: Fault | None = None


def prompt_of(request_json: dict | None) -> str:
    """The prompt text of a request to any route: ``inputs`` (TGI), ``prompt`` (completions),
    or the chat messages' contents joined by newlines."""
    if not request_json:
        return ""
    if "inputs" in request_json:
        return str(request_json["inputs"])
    if "messages" in request_json:
        parts = []
        for message in request_json["messages"]:
            content = message.get("content")
            if isinstance(content, list):  # OpenAI content parts
                content = "".join(part.get("text", "") for part in content)
            parts.append(str(content or ""))
        return "\n".join(parts)
    if "prompt" in request_json:
        prompt = request_json["prompt"]
        return prompt[0] if isinstance(prompt, list) else str(prompt)
    return ""


def tokenize(text: str) -> list[tuple[str, int, int]]:
    """(token text, start, end) character spans; concatenating the texts gives ``text`` back."""
    return [(m.group(0), m.start(), m.end()) for m in TOKEN_PATTERN.finditer(text)]


def token_id(text: str) -> int:
    return 100 + zlib.crc32(text.encode()) % 49_000


def default_logprob(text: str, position: int) -> float:
    return -0.25 * (1 + zlib.crc32(text.encode()) % 8)


def cut(text: str, max_new_tokens: int | None, stop: list[str]) -> tuple[str, str, int]:
    """Apply stop sequences and the token budget: (text, finish_reason, generated_tokens)."""
    for sequence in stop or []:
        at = text.find(sequence)
        if at >= 0:
            text = text[: at + len(sequence)]
            return text, "stop_sequence", len(tokenize(text))
    tokens = tokenize(text)
    if max_new_tokens is not None and len(tokens) > max_new_tokens:
        text = "".join(t for t, _, _ in tokens[:max_new_tokens])
        return text, "length", max_new_tokens
    return text, "eos_token", len(tokens)


def info_body(model_id: str, max_concurrent_requests: int, max_input_tokens: int, max_total_tokens: int) -> dict:
    """TGI's ``GET /info`` reply."""
    return {
        "model_id": model_id, "model_sha": None, "model_pipeline_tag": "text-generation",
        "max_concurrent_requests": max_concurrent_requests, "max_best_of": 2,
        "max_stop_sequences": 4, "max_input_tokens": max_input_tokens,
        "max_total_tokens": max_total_tokens, "validation_workers": 2,
        "max_client_batch_size": 4, "router": "text-generation-router", "version": "3.3.6-stand-in",
    }


def too_long(prompt_tokens: int, max_new_tokens: int, max_input_tokens: int, max_total_tokens: int) -> str | None:
    """TGI's input validation: the 422 message for a prompt over the limits, None when it fits."""
    if prompt_tokens > max_input_tokens:
        return f"Input validation error: `inputs` must have less than {max_input_tokens} tokens. Given: {prompt_tokens}"
    if prompt_tokens + max_new_tokens > max_total_tokens:
        return (f"Input validation error: `inputs` tokens + `max_new_tokens` must be <= {max_total_tokens}. "
                f"Given: {prompt_tokens} `inputs` tokens and {max_new_tokens} `max_new_tokens`")
    return None
