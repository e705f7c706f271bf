"""Real inference servers on 127.0.0.1 serving the bundled SmolLM2-135M-Instruct:

- llama.cpp (``llama_cpp.server``) on the OpenAI-compatible path: a real RLHN stage 1 over
  fixture rows with ``response_format_style: llamacpp``; the verdict regex travels as a GBNF
  grammar, and every answer must parse;
- vLLM (eager, fp32) for prompt-token log-probabilities: a CLEAR-style confidence score of a
  known continuation through ``Backend.score`` with the openai backend equals the local
  transformers backend's exact score within 1e-3 per token.

Marked ``servers`` (deselect by default; CI runs ``scripts/real_servers.sh test``, which
installs the servers into their own venv first). Skipped when that venv is missing. Servers
start on ephemeral loopback ports, waits are bounded, servers are killed at teardown.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.integration.smollm2_hf import gguf_path

pytestmark = pytest.mark.servers

ROOT = Path(__file__).resolve().parents[2]
VENV = (ROOT / os.environ.get("HARDNEG_SERVERS_VENV", ".venv-servers")).resolve()  # relative: to the repo root
CACHE = Path(os.environ.get("HARDNEG_CACHE", Path.home() / ".cache" / "hardneg"))
MODEL_HF = CACHE / "smollm2-hf"
SERVED = "smollm2"


def servers_python() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        pytest.skip(f"no servers venv at {VENV}: run scripts/real_servers.sh install")
    return python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, name: str, cmd: list[str], port: int, log: Path, env: dict | None = None):
        self.name, self.port, self.log = name, port, log
        self.url = f"http://127.0.0.1:{port}"
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=dict(os.environ, **(env or {})), cwd=log.parent)

    def wait_ready(self, timeout_s: float) -> Server:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log.read_text(errors='replace')[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/v1/models", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{self.name} not ready after {timeout_s} s:\n{self.log.read_text(errors='replace')[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
        self._log.close()


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    python = servers_python()
    port = free_port()
    cmd = [str(python), "-m", "llama_cpp.server", "--model", str(gguf_path()), "--model_alias", SERVED, "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", "4096", "--interrupt_requests", "false"]
    server = Server("llama.cpp", cmd, port, tmp_path_factory.mktemp("llama") / "server.log")
    try:
        yield server.wait_ready(120)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    python = servers_python()
    if not (MODEL_HF / "config.json").exists():
        pytest.skip(f"no dequantised SmolLM2 folder at {MODEL_HF}: run scripts/real_servers.sh install")
    port = free_port()
    cmd = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(MODEL_HF), "--served-model-name", SERVED,
           "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "4096", "--enforce-eager", "--dtype", "float32"]
    env = {"VLLM_CPU_KVCACHE_SPACE": "2", "HF_HUB_OFFLINE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    server = Server("vLLM", cmd, port, tmp_path_factory.mktemp("vllm") / "server.log", env)
    try:
        yield server.wait_ready(600)
    finally:
        server.stop()


def test_llamacpp_rlhn_stage1_with_grammar_constrained_verdicts(llama_server, tmp_path):
    from builders.judges.annotate import RetryPolicy
    from builders.judges.endpoints import make_backend
    from builders.judges.endpoints.spec import EndpointSpec
    from builders.judges.store import JudgmentStore
    from builders.methods.rlhn.cascade import run_rlhn_sync
    from builders.methods.rlhn.stage import RlhnSettings, Stage
    from builders.sources.readers import SourceConfig, read_source
    from builders.sources.validate import validate

    source = ROOT / "tests" / "fixtures" / "rlhn" / "fiqa.stage_1.gpt-4o-mini.jsonl"
    rows = list(validate(read_source(SourceConfig(path=str(source), limit=3)), "fail"))
    backend = make_backend(EndpointSpec(kind="openai", url=llama_server.url, model=SERVED, response_format_style="llamacpp", concurrency=1, timeout_s=300))
    assert "regex" in backend.supports_constraint  # sent as a GBNF grammar
    settings = RlhnSettings(negatives_per_prompt=3, max_prompts_per_query=1, max_passage_words=30, reason_max_chars=60,
                            max_new_tokens=120, temperature=0.0, parse_retries=0, concurrency=1)
    with JudgmentStore(tmp_path / "j.sqlite") as store:
        result, ledgers = run_rlhn_sync(rows, [Stage("stage1", backend)], settings, store, RetryPolicy(max_attempts=2), progress=False)
    judgments = result.judgments
    assert len(judgments) == 3
    assert [j["status"] for j in judgments] == ["ok"] * 3, [j["raw_response"] for j in judgments]
    for j in judgments:
        assert j["raw_response"].startswith("<thinking>") and j["raw_response"].endswith("</worse></verdict>")
        assert j["prompt_tokens"] and j["completion_tokens"]
    assert result.stats["fiqa"]["parse_failures"] == 0 and result.stats["fiqa"]["judged_stage1"] == 3


def test_vllm_prompt_logprobs_equal_the_local_exact_score(vllm_server):
    from builders.judges.endpoints import make_backend
    from builders.judges.endpoints.base import ScoreRequest
    from builders.judges.endpoints.spec import EndpointSpec

    request = ScoreRequest(
        messages=({"role": "system", "content": "You judge search results."},
                  {"role": "user", "content": "Query: capital of France\nPassage: Paris is the capital and largest city of France.\nDoes the passage answer the query? Answer Yes or No."}),
        continuation="Yes",
    )
    remote = make_backend(EndpointSpec(kind="openai", url=vllm_server.url, model=SERVED, response_format_style="vllm", tokenizer=str(MODEL_HF), timeout_s=300))
    local = make_backend(EndpointSpec(kind="local", model=str(MODEL_HF), device="cpu", dtype="float32"))

    async def both():
        try:
            return (await remote.score(request)).tokens, (await local.score(request)).tokens
        finally:
            await remote.aclose()

    served, exact = asyncio.run(both())
    assert [t.text for t in served] == [t.text for t in exact] and served, (served, exact)
    for s, e in zip(served, exact):
        assert abs(s.logprob - e.logprob) < 1e-3, (s, e)
    confidence = sum(t.logprob for t in exact)
    assert -20 < confidence < 0  # a real probability of "Yes", neither 0 nor 1
