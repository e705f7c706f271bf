"""Judge endpoints: one ``EndpointSpec`` (what a recipe names) -> one ``Backend``.

    backend = make_backend(EndpointSpec(kind="tgi", url="http://127.0.0.1:8080",
                                        tokenizer="HuggingFaceTB/SmolLM2-135M-Instruct"))
    generation = await backend.generate(GenerateRequest(messages=({"role": "user", "content": "Hi"},)))

Kinds:
- ``tgi``: text-generation-inference ``/generate`` (``grammar`` for constraints; prompt-token
  scoring with ``--enable-prefill-logprobs``). ``transport="aiohttp"`` (default) speaks HTTP
  through ``builders.judges.endpoints.http`` (~0.9 CPU-ms per request); ``"huggingface_hub"`` goes
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

from builders.judges.endpoints.base import Backend
from builders.judges.endpoints.chat import load_tokenizer
from builders.judges.endpoints.spec import EndpointSpec


def make_backend(spec: EndpointSpec) -> Backend:
    if spec.kind == "tgi":
        from builders.judges.endpoints.tgi import TGIBackend

        return TGIBackend(spec, tokenizer=load_tokenizer(spec.tokenizer))
    if spec.kind == "openai":
        from builders.judges.endpoints.openai import OpenAIBackend

        return OpenAIBackend(spec, tokenizer=load_tokenizer(spec.tokenizer))
    if spec.kind == "local":
        from builders.judges.endpoints.local import LocalBackend

        return LocalBackend.from_spec(spec, threads=spec.threads)
    raise ValueError(f"endpoint kind {spec.kind!r} is not one of 'tgi', 'openai', 'local'")
