"""Judge endpoints: one ``EndpointSpec`` (what a recipe names) -> one ``Backend``.

    backend = make_backend(EndpointSpec(kind="tgi", url="http://127.0.0.1:8080",
                                        tokenizer="HuggingFaceTB/SmolLM2-135M-Instruct"))
    generation = await backend.generate(GenerateRequest(messages=({"role": "user", "content": "Hi"},)))

Kinds:
- ``tgi``: text-generation-inference ``/generate`` (``grammar`` for constraints; prompt-token
  scoring with ``--enable-prefill-logprobs``). ``transport="aiohttp"`` (default) speaks HTTP
  through ``builders.endpoints.http`` (~0.9 CPU-ms per request); ``"huggingface_hub"`` goes
  through ``huggingface_hub.AsyncInferenceClient`` (3.4-4.8 CPU-ms per request at 64+ in
  flight on 2 cores: two worker-thread hops per call and a 20-connection idle pool).
- ``openai``: any OpenAI-compatible ``/v1/chat/completions`` (vLLM, SGLang, llama.cpp, TGI's
  Messages API); ``response_format_style`` picks the constraint shape the server speaks.
- ``local``: an in-process transformers model (Hub id, folder, or GGUF file); the default is
  the bundled SmolLM2-135M-Instruct GGUF, which needs no network.

Secrets: ``api_key_env`` is the NAME of an environment variable; the key is read from the
environment when the backend is built and never stored in the spec, the store or logs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from builders.endpoints.base import (
    Backend,
    Constraint,
    EndpointError,
    GenerateRequest,
    Generation,
    Scored,
    ScoreRequest,
    TokenScore,
)

ResponseFormatStyle = Literal["openai", "vllm", "llamacpp", "tgi", "sglang"]
Transport = Literal["aiohttp", "huggingface_hub"]


@dataclass
class EndpointSpec:
    kind: Literal["tgi", "openai", "local"] = "local"
    url: str | None = None  # base URL of the server (tgi/openai); None for local
    model: str | None = None  # served model name (openai), Hub id / folder (local); recorded as the judge id
    api_key_env: str | None = None  # NAME of the env var holding a bearer token (e.g. "HF_TOKEN"), never the token
    timeout_s: float = 120.0  # per attempt
    concurrency: int = 8  # requests in flight against this endpoint (local: always one at a time)
    tokenizer: str | None = None  # Hub id / folder: chat template for /generate prompts and token counts
    response_format_style: ResponseFormatStyle = "openai"  # openai flavour: how constraints are sent
    gguf_file: str | None = None  # local: GGUF file name inside ``model`` (a folder) or a path to one
    max_new_tokens: int | None = None  # caps every request's max_new_tokens (None: the request decides)
    device: str | None = None  # local: "cpu", "cuda", ... (None: cuda when available)
    dtype: str | None = None  # local: "float32", "bfloat16", ... (None: float32 on cpu, bfloat16 on cuda)
    threads: int | None = None  # local: torch CPU threads (None: torch's default)
    transport: Transport = "aiohttp"  # tgi: HTTP client ("huggingface_hub": AsyncInferenceClient); openai: aiohttp only
    max_input_tokens: int | None = None  # prompt tokens the endpoint accepts (None: what the server / model says)

    @property
    def model_id(self) -> str:
        """The name the judgment store and the dataset card record for this judge."""
        if self.kind == "local":
            if self.model:
                return self.model + (f"/{self.gguf_file}" if self.gguf_file else "")
            return self.gguf_file or "HuggingFaceTB/SmolLM2-135M-Instruct (bundled GGUF Q4_1)"
        return self.model or self.tokenizer or self.url or "unknown"

    def api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        value = os.environ.get(self.api_key_env)
        if not value:
            raise EndpointError(
                "validation",
                f"environment variable {self.api_key_env} (named by the endpoint's api_key_env) is empty or unset; "
                f"export it or drop api_key_env",
                retryable=False,
            )
        return value


def load_tokenizer(name_or_path: str | None):
    """A transformers tokenizer (chat template, token counts), or None when none is named."""
    if not name_or_path:
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name_or_path)


def input_limit_from(max_input_tokens, max_total_tokens, max_new_tokens: int) -> int | None:
    """Prompt tokens a server takes for a request that may generate ``max_new_tokens``:
    min(max_input_tokens, max_total_tokens - max_new_tokens) over the values it offered
    (positive integers; anything else counts as not offered). None: it offered neither."""
    def offered(value) -> int | None:
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    limits = [offered(max_input_tokens), None if offered(max_total_tokens) is None else max_total_tokens - max_new_tokens]
    known = [x for x in limits if x is not None]
    return min(known) if known else None


def tokenizer_spans(tokenizer, text: str, *, add_special_tokens: bool) -> list[tuple[int, int]]:
    """Character spans of ``text``'s tokens under a transformers tokenizer (special tokens it
    adds have zero width). Needs a fast (Rust) tokenizer: the spans are its offset mapping."""
    if not tokenizer.is_fast:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no fast (Rust) version, so it gives no character "
                         "offsets to shorten prompts at token boundaries; name one with a tokenizer.json")
    offsets = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)["offset_mapping"]
    return [(int(a), int(b)) for a, b in offsets]


def render_chat_prompt(messages, tokenizer=None, *, for_server_that_adds_special_tokens: bool = False) -> str:
    """Chat messages -> one prompt string, ready for the assistant's answer.

    With a tokenizer that has a chat template, its template renders the messages with the
    generation prompt. Servers like TGI's ``/generate`` tokenize the prompt WITH special tokens,
    so when the template already starts with the BOS token and the tokenizer adds one itself,
    the template's copy is removed (``for_server_that_adds_special_tokens``) - one BOS, not two.

    Without a tokenizer (or template) the rendering is plain and documented:
    ``"System: ...\n\nUser: ...\n\nAssistant:\n"`` - one ``Role: content`` block per message.
    """
    if tokenizer is not None and tokenizer.chat_template:
        text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        bos = tokenizer.bos_token
        if for_server_that_adds_special_tokens and bos and text.startswith(bos) and _tokenizer_adds_bos(tokenizer):
            text = text[len(bos):]
        return text
    blocks = [f"{str(m['role']).capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join(blocks + ["Assistant:\n"])


def _tokenizer_adds_bos(tokenizer) -> bool:
    ids = tokenizer("a").input_ids
    return bool(ids) and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id


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


def make_backend(spec: EndpointSpec) -> Backend:
    if spec.kind == "tgi":
        from builders.endpoints.tgi import TGIBackend

        return TGIBackend(spec, tokenizer=load_tokenizer(spec.tokenizer))
    if spec.kind == "openai":
        from builders.endpoints.openai import OpenAIBackend

        return OpenAIBackend(spec, tokenizer=load_tokenizer(spec.tokenizer))
    if spec.kind == "local":
        from builders.endpoints.local import LocalBackend

        return LocalBackend.from_spec(spec, threads=spec.threads)
    raise ValueError(f"endpoint kind {spec.kind!r} is not one of 'tgi', 'openai', 'local'")


__all__ = [
    "Backend",
    "Constraint",
    "EndpointError",
    "EndpointSpec",
    "GenerateRequest",
    "Generation",
    "Scored",
    "ScoreRequest",
    "error_for_status",
    "render_chat_prompt",
    "TokenScore",
    "input_limit_from",
    "load_tokenizer",
    "tokenizer_spans",
    "make_backend",
]
