"""Any OpenAI-compatible server: ``POST /v1/chat/completions`` (vLLM, SGLang, llama.cpp,
TGI's Messages API, OpenAI itself).

Constraints travel in the shape each flavour (``EndpointSpec.response_format_style``) reads:

=========  ==============================================================  =====================================
flavour    JSON schema                                                     regex
=========  ==============================================================  =====================================
openai     ``response_format: {"type": "json_schema", "json_schema":        not offered: sent unconstrained
           {"name", "schema", "strict": true}}``
vllm       same as openai                                                  ``structured_outputs: {"regex": ...}``
                                                                           (vLLM >= 0.12; ``guided_regex`` before)
sglang     same as openai                                                  top-level ``regex``
llamacpp   ``response_format: {"type": "json_object", "schema": ...}``      GBNF ``grammar`` translated from the regex
                                                                           (``builders.judges.endpoints.gbnf``)
tgi        ``response_format: {"type": "json", "value": ...}``              ``{"type": "regex", "value": ...}``
=========  ==============================================================  =====================================

An unconstrained send is marked ``meta["constraint"] = "not enforced"`` and the annotator's
parse check still decides. ``score`` uses ``/v1/completions`` with ``echo`` + ``logprobs``
(vLLM's prompt logprobs); llama.cpp's echo logprobs are shifted by a token, so that flavour
refuses to score.
"""

from __future__ import annotations

import json

from builders.judges.endpoints.base import Backend, Constraint, EndpointError, GenerateRequest, Generation, Scored, ScoreRequest, TokenScore
from builders.judges.endpoints.chat import render_chat_prompt
from builders.judges.endpoints.gbnf import regex_to_gbnf
from builders.judges.endpoints.http import HttpClient
from builders.judges.endpoints.shared_read import LIMIT_RETRY_S, SharedRead
from builders.judges.endpoints.spans import batched_tokenizer_spans
from builders.judges.endpoints.spec import DIRECT_CONCURRENCY, EndpointSpec, input_limit_from

REGEX_FLAVOURS = frozenset({"vllm", "sglang", "tgi", "llamacpp"})


def constraint_fields(constraint: Constraint, style: str) -> dict:
    """The request-body fields that carry ``constraint`` for a server flavour ({} when the
    flavour cannot enforce it)."""
    if constraint.kind == "json":
        schema = json.loads(constraint.value) if isinstance(constraint.value, str) else constraint.value
        if style == "tgi":
            return {"response_format": {"type": "json", "value": schema}}
        if style == "llamacpp":
            return {"response_format": {"type": "json_object", "schema": schema}}
        return {"response_format": {"type": "json_schema", "json_schema": {"name": "judgment", "schema": schema, "strict": True}}}
    if constraint.kind == "regex":
        if style == "tgi":
            return {"response_format": {"type": "regex", "value": constraint.value}}
        if style == "vllm":
            return {"structured_outputs": {"regex": constraint.value}}
        if style == "sglang":
            return {"regex": constraint.value}
        if style == "llamacpp":
            return {"grammar": regex_to_gbnf(constraint.value)}
        return {}
    raise ValueError(f"constraint kind {constraint.kind!r} is not 'regex' or 'json'")


class OpenAIBackend(Backend):
    kind = "openai"

    def __init__(self, spec: EndpointSpec, tokenizer=None):
        if not spec.url:
            raise ValueError("an openai endpoint needs `url` (e.g. http://127.0.0.1:8000 or .../v1)")
        self.spec = spec
        self.concurrency = spec.concurrency or DIRECT_CONCURRENCY  # used without a fleet only
        base = spec.url.rstrip("/")
        self.base_url = base[: -len("/v1")] if base.endswith("/v1") else base
        self.model_id = spec.model_id
        self.tokenizer = tokenizer
        self.style = spec.response_format_style
        self.supports_constraint = frozenset({"json", "regex"} if self.style in REGEX_FLAVOURS else {"json"})
        if spec.transport != "aiohttp":
            raise ValueError(f"openai endpoints speak through aiohttp only; transport {spec.transport!r} is for tgi")
        token = spec.api_key()
        self.http = HttpClient(self.base_url, timeout_s=spec.timeout_s,
                               headers={"Authorization": f"Bearer {token}"} if token else {})
        self._served_model: str | None = spec.model
        self._context = SharedRead(self._read_context, LIMIT_RETRY_S)  # {"tokens": the server's context or None}

    def count_tokens(self, text: str) -> int | None:
        if self.tokenizer is None:
            return None
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def prompt_text(self, messages) -> str:
        """The judge tokenizer's chat template (what the server applies), else the plain rendering."""
        return render_chat_prompt(messages, self.tokenizer)

    async def token_spans(self, text: str) -> list[tuple[int, int]] | None:
        """With ``spec.tokenizer`` only: these servers' tokenize routes (vLLM's, llama.cpp's) give
        no character offsets to cut a passage at, and they apply their own chat template."""
        if self.tokenizer is None:
            return None
        return await batched_tokenizer_spans(self.tokenizer, text, add_special_tokens=False)

    async def input_limit(self, max_new_tokens: int) -> int | None:
        """``spec.max_input_tokens``, else the context length the server offers minus
        ``max_new_tokens``: vLLM's ``max_model_len`` in ``GET /v1/models``, llama.cpp's
        ``n_ctx`` in ``GET /props``. Read once; None when the server offers neither."""
        if self.spec.max_input_tokens is not None:
            return self.spec.max_input_tokens
        context = await self._context.get()
        if context is None:
            return None  # the server did not answer: unknown for now, asked again LIMIT_RETRY_S later
        if self.spec.max_new_tokens is not None:
            max_new_tokens = min(max_new_tokens, self.spec.max_new_tokens)
        return input_limit_from(None, context["tokens"], max_new_tokens)

    async def _read_context(self) -> dict | None:
        """The server's context length; None when it did not answer (a retryable error)."""
        try:
            return {"tokens": await self._context_length()}
        except EndpointError as error:
            if error.retryable:
                return None
            return {"tokens": None}  # no such route: no limit from it

    async def _context_length(self) -> int | None:
        models, _ = await self.http.get("/v1/models")
        listed = models.get("data") if isinstance(models, dict) else None
        if isinstance(listed, list) and listed and isinstance(listed[0], dict) and listed[0].get("max_model_len"):
            return listed[0]["max_model_len"]
        if self.style == "llamacpp":
            props, _ = await self.http.get("/props")
            settings = props.get("default_generation_settings") if isinstance(props, dict) else None
            return settings.get("n_ctx") if isinstance(settings, dict) else None
        return None

    async def _post(self, route: str, body: dict) -> dict:
        payload, _ = await self.http.post(route, body)
        if not isinstance(payload, dict) or not payload.get("choices"):
            raise EndpointError("protocol", f"{self.base_url}{route} answered without `choices`: {str(payload)[:300]}")
        return payload

    async def served_model(self) -> str:
        """The ``model`` field: the spec's, else the first of ``GET /v1/models``."""
        if self._served_model is None:
            payload, _ = await self.http.get("/v1/models")
            try:
                self._served_model = payload["data"][0]["id"]
            except (KeyError, IndexError, TypeError) as error:
                raise EndpointError("protocol", f"{self.base_url}/v1/models lists no model: {str(payload)[:300]}") from error
        return self._served_model

    async def generate(self, request: GenerateRequest) -> Generation:
        max_tokens = request.max_new_tokens
        if self.spec.max_new_tokens is not None:
            max_tokens = min(max_tokens, self.spec.max_new_tokens)
        body: dict = {
            "model": await self.served_model(),
            "messages": [dict(message) for message in request.messages],
            "max_tokens": max_tokens,
            "temperature": max(request.temperature, 0.0),
        }
        if request.seed is not None:
            body["seed"] = request.seed
        if request.stop:
            body["stop"] = list(request.stop)
        meta: dict = {"url": self.base_url}
        if request.constraint is not None:
            fields = constraint_fields(request.constraint, self.style)
            body.update(fields)
            meta["constraint"] = "enforced" if fields else "not enforced"
        payload = await self._post("/v1/chat/completions", body)
        choice = payload["choices"][0]
        message = choice.get("message") or {}
        usage = payload.get("usage") or {}
        return Generation(
            text=message.get("content") or "",
            finish_reason=choice.get("finish_reason") or "unknown",
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            meta=meta,
        )

    async def score(self, request: ScoreRequest) -> Scored:
        """Prompt-token log-probabilities from ``/v1/completions`` with ``echo: true, logprobs: 1,
        max_tokens: 0`` (vLLM). The prompt is rendered here (the judge tokenizer's chat template,
        or the plain rendering): ``/v1/completions`` applies no template. Offsets come from
        ``text_offset``; the continuation is located at the end of the echoed text. Cost:
        ``usage`` when the server reports it, else the echoed token list's length."""
        if self.style == "llamacpp":
            raise EndpointError(
                "validation",
                "llama.cpp's echo logprobs are shifted by one token (upstream issues #1983, #1276): "
                "score with a vLLM server, TGI with --enable-prefill-logprobs, or a local backend",
                retryable=False,
            )
        prompt = render_chat_prompt(request.messages, self.tokenizer)
        body = {"model": await self.served_model(), "prompt": prompt + request.continuation,
                "echo": True, "logprobs": 1, "max_tokens": 0, "temperature": 0.0}
        payload = await self._post("/v1/completions", body)
        choice = payload["choices"][0]
        logprobs = choice.get("logprobs") or {}
        tokens, values, offsets = logprobs.get("tokens"), logprobs.get("token_logprobs"), logprobs.get("text_offset")
        echoed = choice.get("text") or ""
        if not tokens or values is None or offsets is None or not echoed.endswith(request.continuation):
            raise EndpointError(
                "protocol",
                f"{self.base_url}/v1/completions gave no echoed prompt logprobs (tokens, token_logprobs, text_offset); "
                f"the server must support `echo` with `logprobs` (vLLM does)",
                retryable=False,
            )
        start = len(echoed) - len(request.continuation)
        ends = list(offsets[1:]) + [len(echoed)]
        scores = []
        for token, value, begin, end in zip(tokens, values, offsets, ends):
            if end <= start or end <= begin:
                continue
            if value is None:
                raise EndpointError("protocol", f"{self.base_url}: no logprob for continuation token {token!r}")
            scores.append(TokenScore(token, float(value), max(begin - start, 0), end - start))
        usage = payload.get("usage") or {}
        prompt_tokens = usage.get("prompt_tokens")
        return Scored(scores, prompt_tokens=len(tokens) if prompt_tokens is None else prompt_tokens,
                      completion_tokens=usage.get("completion_tokens", 0), meta={"url": self.base_url})

    async def aclose(self) -> None:
        """Closes this event loop's connections; the backend stays usable."""
        await self.http.aclose()
