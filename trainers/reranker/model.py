"""Rerankers: a cross-encoder and an LLM reranker behind one scoring module and one saved contract.

``Reranker`` maps ``(query, passage)`` pairs to one relevance logit each:

- ``cross_encoder``: ``AutoModelForSequenceClassification(num_labels=1)`` over the tokenizer's
  pair encoding (``truncation="longest_first"``, what ``sentence_transformers.CrossEncoder``
  does), so ``CrossEncoder(path).predict(pairs)`` returns ``sigmoid`` of the training logits.
- ``llm_reranker`` with head ``causal_yes_no``: a causal LM reads ``template`` filled with the
  query and passage; score = logit(yes) - logit(no) at the last position.
- ``llm_reranker`` with head ``sequence_classification``: the same prompt, one logit from a
  linear ``score`` head on the last token (``AutoModelForSequenceClassification``).

LLM prompts are tokenised piecewise: the template text before ``{document}`` (with the query),
the passage, and the text after it are tokenised separately (no special tokens) and only the
passage is truncated to fit ``max_length``, so the closing question and answer cue survive
truncation. Batches are left-padded with explicit ``position_ids``, so the last position is the
scored one whatever the padding, and the causal head needs logits for that one position only.

The HEAD CONTRACT (``reranker_head.json``: kind, head, template, yes/no token ids, max length,
padding side, base model, where the adapter is) is written next to the weights and read back by
:func:`load_reranker`; nothing about how to score is re-derived at load time. That is what keeps a
model trained as a classifier from being served as a yes/no probe (Tevatron's logged bug).

LoRA (peft): ``<out>/adapter`` holds the adapter; with ``merge_on_save`` the base is reloaded and
the adapter merged into it at ``<out>`` (so it also works after ZeRO-3 training).

Why not TRL here: our rerankers are trained with a listwise softmax over the scores of one
positive and k negatives of the same query (or BCE per pair), which needs every passage of a
group scored in the same step and a score read from one logit (or a yes/no logit difference).
TRL's ``SFTTrainer`` optimises next-token cross-entropy over a whole vocabulary per example and its
``RewardTrainer`` is pairwise (chosen vs rejected) on chat data; neither expresses the group
loss, and both own the training loop that we keep shared with the embedder on accelerate
(DDP/DeepSpeed through ``accelerator.prepare``). We use peft directly for LoRA, as TRL does.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from trainers.embedder.model import resolve_model_path
from trainers.reranker.config import RerankerConfig

HEAD_CONTRACT_FILE = "reranker_head.json"


class RerankerContractError(ValueError):
    """A saved reranker whose head contract is missing or inconsistent."""


@dataclass
class HeadContract:
    kind: Literal["cross_encoder", "llm_reranker"]
    head: Literal["sequence_classification", "causal_yes_no"]
    max_length: int
    base_model: str
    template: str | None = None  # llm_reranker: prompt with {query} and {document}
    yes_token_id: int | None = None  # causal_yes_no: score = logit[yes] - logit[no]
    no_token_id: int | None = None
    padding_side: str = "right"
    adapter_dir: str | None = None  # relative to the model folder, when trained with LoRA
    merged: bool = True  # full weights present at the folder root
    score: str = "logit"  # what predict() returns, before any activation

    def save(self, out_dir: Path) -> None:
        (Path(out_dir) / HEAD_CONTRACT_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, model_dir: Path) -> HeadContract:
        path = Path(model_dir) / HEAD_CONTRACT_FILE
        if not path.is_file():
            raise RerankerContractError(
                f"{path} is missing: this folder was not saved by trainers.reranker.model, so how to score with it "
                "(template, head, yes/no tokens) is unknown. For a plain cross-encoder use "
                "sentence_transformers.CrossEncoder(path) instead."
            )
        data = json.loads(path.read_text())
        contract = cls(**data)
        if contract.head == "causal_yes_no" and (contract.yes_token_id is None or contract.no_token_id is None):
            raise RerankerContractError(f"{path}: head causal_yes_no needs yes_token_id and no_token_id")
        return contract


def single_token_id(tokenizer, token: str, what: str) -> int:
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(
            f"{what}={token!r} is {len(ids)} tokens ({ids}) for this tokenizer; pick a string that is exactly one "
            "token (try it with and without a leading space)"
        )
    return ids[0]


class Reranker(nn.Module):
    """Scores (query, passage) pairs with the model and the head contract."""

    def __init__(self, model: nn.Module, tokenizer, contract: HeadContract):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.contract = contract

    @property
    def config(self):
        """The wrapped model's HF config (accelerate fills DeepSpeed's ``auto`` sizes from it)."""
        return self.model.config

    # ---- inputs ----
    def encode(self, pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
        c = self.contract
        if c.kind == "cross_encoder":
            return dict(self.tokenizer(
                [q for q, _ in pairs], [d for _, d in pairs], padding=True, truncation="longest_first",
                max_length=c.max_length, return_tensors="pt",
            ))
        before, after = c.template.split("{document}", 1)
        tok = self.tokenizer
        rows = []
        for query, doc in pairs:
            head = tok.encode(before.format(query=query), add_special_tokens=False)
            tail = tok.encode(after.format(query=query), add_special_tokens=False)
            room = c.max_length - len(head) - len(tail)
            if room < 1:  # an overlong query: keep its start and the closing cue
                head = head[: max(c.max_length - len(tail) - 1, 1)]
                room = max(c.max_length - len(head) - len(tail), 0)
            body = tok.encode(doc, add_special_tokens=False)[:room]
            rows.append(head + body + tail)
        width = max(len(r) for r in rows)
        pad = tok.pad_token_id
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # left padding: the scored token is always at -1
            input_ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            attention[i, width - len(r):] = 1
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        return {"input_ids": input_ids, "attention_mask": attention, "position_ids": positions}

    # ---- scores ----
    def forward(self, input_ids, attention_mask, token_type_ids=None, position_ids=None) -> torch.Tensor:
        c = self.contract
        if c.kind == "cross_encoder":
            kwargs = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits[:, 0]
        if c.head == "sequence_classification":
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
            return out.logits[:, 0]
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         logits_to_keep=1)
        last = out.logits[:, -1]
        return last[:, c.yes_token_id] - last[:, c.no_token_id]

    @torch.no_grad()
    def predict(self, pairs: list[tuple[str, str]], batch_size: int = 32) -> list[float]:
        self.eval()
        device = next(self.model.parameters()).device
        scores: list[float] = []
        for start in range(0, len(pairs), batch_size):
            batch = {k: v.to(device) for k, v in self.encode(pairs[start : start + batch_size]).items()}
            scores.extend(self(**batch).float().cpu().tolist())
        return scores


# ---------------------------------------------------------------- building
def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        if tok.eos_token is None:
            raise ValueError(f"tokenizer of {path} has neither a pad nor an eos token; give it a pad token")
        tok.pad_token = tok.eos_token
    return tok


def _head_class(head: str):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForCausalLM if head == "causal_yes_no" else AutoModelForSequenceClassification


def _model_kwargs(head: str, dtype, attn_implementation, pad_token_id) -> dict:
    kwargs: dict = {"dtype": dtype}
    if head == "sequence_classification":
        kwargs.update(num_labels=1, pad_token_id=pad_token_id)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    return kwargs


def build_reranker(cfg: RerankerConfig) -> Reranker:
    """The training module for ``cfg``: base weights, head, optional LoRA, and its contract."""
    base = resolve_model_path(cfg.model)
    tok = _load_tokenizer(base)
    contract = HeadContract(kind=cfg.kind, head=cfg.head, max_length=cfg.max_length, base_model=cfg.model)
    if cfg.kind == "llm_reranker":
        contract.template = cfg.template
        contract.padding_side = "left"
        if cfg.head == "causal_yes_no":
            contract.yes_token_id = single_token_id(tok, cfg.yes_token, "yes_token")
            contract.no_token_id = single_token_id(tok, cfg.no_token, "no_token")
            if contract.yes_token_id == contract.no_token_id:
                raise ValueError("yes_token and no_token map to the same token id")
    dtype = torch.bfloat16 if cfg.bf16 and cfg.kind == "llm_reranker" else torch.float32
    model = _head_class(cfg.head).from_pretrained(
        base, **_model_kwargs(cfg.head, dtype, cfg.attn_implementation, tok.pad_token_id)
    )
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.lora_target_modules),
            task_type="CAUSAL_LM" if cfg.head == "causal_yes_no" else "SEQ_CLS",
        )
        model = get_peft_model(model, lora)
        contract.adapter_dir = "adapter"
        contract.merged = cfg.merge_on_save
    return Reranker(model, tok, contract)


# ---------------------------------------------------------------- saving and loading
def save_reranker(reranker: Reranker, out_dir: str | Path, state_dict: dict | None = None) -> Path:
    """Write weights (+ adapter), tokenizer, contract; cross-encoders also get the CrossEncoder files.

    ``state_dict``: the full state of ``reranker.model`` gathered by the caller (ZeRO-3), if any.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    c = reranker.contract
    if c.adapter_dir:
        reranker.model.save_pretrained(out / c.adapter_dir, state_dict=state_dict)
        if c.merged:
            merge_reranker_adapter(c, out)
    else:
        reranker.model.save_pretrained(out, state_dict=state_dict)
    reranker.tokenizer.model_max_length = c.max_length
    reranker.tokenizer.save_pretrained(out)
    c.save(out)
    if c.kind == "cross_encoder":
        write_cross_encoder_files(out)
    return out


def merge_reranker_adapter(contract: HeadContract, out: Path) -> None:
    """Reload the base on CPU with the same head, merge the saved adapter into it, save at ``out``."""
    from peft import PeftModel

    base_path = resolve_model_path(contract.base_model)
    tok = _load_tokenizer(base_path)
    base = _head_class(contract.head).from_pretrained(
        base_path, **_model_kwargs(contract.head, None, None, tok.pad_token_id)
    )
    merged = PeftModel.from_pretrained(base, str(out / contract.adapter_dir)).merge_and_unload()
    merged.save_pretrained(out)


def write_cross_encoder_files(out: Path) -> None:
    """Let ``CrossEncoder(out)`` load the folder: one logit, sigmoid activation, our max length.

    Written as files rather than through ``CrossEncoder(...).save_pretrained`` so nothing is reloaded
    here (under ZeRO-3 a reload would be partitioned and save empty weights). Without ``modules.json``,
    sentence-transformers loads an HF sequence-classification folder as a CrossEncoder; its max length
    is the tokenizer's ``model_max_length`` (set by :func:`save_reranker`).
    """
    import sentence_transformers
    import transformers

    config = {
        "__version__": {"sentence_transformers": sentence_transformers.__version__,
                        "transformers": transformers.__version__, "pytorch": torch.__version__},
        "activation_fn": "torch.nn.modules.activation.Sigmoid",
        "default_prompt_name": None,
        "model_type": "CrossEncoder",
        "prompts": {},
    }
    (out / "config_sentence_transformers.json").write_text(json.dumps(config, indent=2) + "\n")


def load_reranker(path: str | Path, device: str | None = None, dtype=None) -> Reranker:
    """Rebuild the scoring module from a saved folder, following its head contract."""
    path = Path(path)
    contract = HeadContract.load(path)
    tok = _load_tokenizer(str(path))
    cls = _head_class(contract.head)
    kwargs = _model_kwargs(contract.head, dtype, None, tok.pad_token_id)
    if contract.merged:
        model = cls.from_pretrained(str(path), **kwargs)
    elif contract.adapter_dir:
        from peft import PeftModel

        base = cls.from_pretrained(resolve_model_path(contract.base_model), **kwargs)
        model = PeftModel.from_pretrained(base, str(path / contract.adapter_dir))
    else:
        raise RerankerContractError(f"{path}: contract says no merged weights and no adapter")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    reranker = Reranker(model.to(device), tok, contract)
    reranker.eval()
    return reranker
