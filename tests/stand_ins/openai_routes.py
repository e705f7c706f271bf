"""The OpenAI-compatible routes of the TGI stand-in (``tests/stand_ins/tgi_server.py``):
``POST /v1/chat/completions`` and ``POST /v1/completions`` (vLLM's ``echo`` + ``logprobs``
shape, used to score prompt tokens).

``OpenAIRoutes`` is a mixin of the stand-in's request handler: it uses the handler's
``server_ref`` (the ``TGIStandIn``), ``_send``, ``_error``, ``_text`` and ``_too_long``.
"""

from __future__ import annotations

import time

from tests.stand_ins.tgi_protocol import Fault, cut, prompt_of, tokenize


class OpenAIRoutes:
    def _usage(self, prompt: str, completion: str) -> dict:
        p, c = len(tokenize(prompt)), len(tokenize(completion))
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def _chat(self, body: dict, fault: Fault | None) -> int:
        if not body.get("messages"):
            self._error(422, "missing field `messages`")
            return 422
        prompt = prompt_of(body)
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        problem = self._too_long(len(tokenize(prompt)), max_tokens or 0)
        if problem:
            self._error(422, problem)
            return 422
        text, finish_reason = self._text(body, fault)
        stop = body.get("stop") or []
        text, cut_reason, _ = cut(text, max_tokens, [stop] if isinstance(stop, str) else stop)
        openai_reason = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}[cut_reason]
        usage = self._usage(prompt, text)
        self._send(200, {
            "id": f"chatcmpl-stand-in-{len(self.server_ref.requests)}", "object": "chat.completion",
            "created": int(time.time()), "model": body.get("model") or self.server_ref.model_id,
            "system_fingerprint": "stand-in",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None, "finish_reason": finish_reason or openai_reason}],
            "usage": usage,
        }, {"x-prompt-tokens": usage["prompt_tokens"], "x-generated-tokens": usage["completion_tokens"]})
        return 200

    def _completions(self, body: dict, fault: Fault | None) -> int:
        """vLLM-shaped ``/v1/completions``; with ``echo`` + ``logprobs`` the prompt's tokens come
        back with their log-probabilities (first one null) and character offsets."""
        stand_in = self.server_ref
        prompt = prompt_of(body)
        max_tokens = body.get("max_tokens", 16)
        text, finish_reason = ("", None) if max_tokens == 0 else self._text(body, fault)
        text, cut_reason, _ = cut(text, max_tokens, body.get("stop") or [])
        openai_reason = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}[cut_reason]
        echo = bool(body.get("echo"))
        choice: dict = {"index": 0, "text": (prompt if echo else "") + text, "logprobs": None,
                        "finish_reason": finish_reason or openai_reason}
        if body.get("logprobs") is not None:
            spans = (tokenize(prompt) if echo else []) + [(t, s + len(prompt), e + len(prompt)) for t, s, e in tokenize(text)]
            logprobs = [None if (echo and i == 0) else stand_in.logprob_fn(t, i) for i, (t, _, _) in enumerate(spans)]
            choice["logprobs"] = {
                "tokens": [t for t, _, _ in spans], "token_logprobs": logprobs,
                "text_offset": [s - (0 if echo else len(prompt)) for _, s, _ in spans],  # into choice["text"]
                "top_logprobs": [None if lp is None else {t: lp} for (t, _, _), lp in zip(spans, logprobs)],
            }
        usage = self._usage(prompt, text)
        self._send(200, {
            "id": f"cmpl-stand-in-{len(stand_in.requests)}", "object": "text_completion", "created": int(time.time()),
            "model": body.get("model") or stand_in.model_id, "choices": [choice], "usage": usage,
        })
        return 200
