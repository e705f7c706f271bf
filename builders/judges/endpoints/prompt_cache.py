"""The local judge's prompt cache: KV states of recent prompts, reused by later prompts that
start with the same tokens (what vLLM's and SGLang's prefix caching do for a server).

``prefill(model, ids, cache)`` runs the model over a prompt and returns its per-layer KV states
and the last position's logits. A prompt the cache holds whole costs nothing (RLHN's stage 2 on
the same model asks exactly stage 1's prompts: in the demo, half the calls); one that shares a
prefix with a held prompt (every RLHN prompt opens with the same system message and template
head, ~60 tokens) prefills only the rest, at the positions after the shared part.

Entries are kept by byte budget, least recently used out first. A prompt's states cost
``2 x layers x kv_heads x head_dim x 4`` bytes a token in float32: 46 KB for SmolLM2-135M, so a
470-token RLHN prompt is ~22 MB and the demo's 30 prompts ~650 MB.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from transformers import DynamicCache

MIN_SHARED = 16  # tokens a held prompt must share with a new one to be reused (fewer: prefill it all)

Layers = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values), [1, kv_heads, tokens, head_dim]


@dataclass
class Entry:
    ids: torch.Tensor  # the prompt's token ids, [tokens]
    layers: Layers
    logits: torch.Tensor  # the last position's logits, float32 on the CPU, [vocab]
    nbytes: int


class PromptCache:
    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self.entries: OrderedDict[tuple[int, ...], Entry] = OrderedDict()
        self.nbytes = 0
        self.hits = {"whole": 0, "prefix": 0, "miss": 0}  # prompts by what the cache gave them
        self.reused_tokens = 0

    def clear(self) -> None:
        self.entries.clear()
        self.nbytes = 0

    def longest(self, ids: torch.Tensor) -> tuple[Entry | None, int]:
        """The held prompt sharing the most leading tokens with ``ids``, and how many."""
        best, shared = None, 0
        for entry in self.entries.values():
            n = min(len(entry.ids), len(ids))
            differ = (entry.ids[:n] != ids[:n]).nonzero()
            common = int(differ[0]) if len(differ) else n
            if common > shared:
                best, shared = entry, common
        return best, shared

    def put(self, ids: torch.Tensor, layers: Layers, logits: torch.Tensor) -> None:
        nbytes = sum(k.nelement() * k.element_size() + v.nelement() * v.element_size() for k, v in layers)
        if nbytes > self.budget_bytes:
            return
        key = tuple(ids.tolist())
        if key in self.entries:
            self.entries.move_to_end(key)
            return
        while self.entries and self.nbytes + nbytes > self.budget_bytes:
            _, old = self.entries.popitem(last=False)
            self.nbytes -= old.nbytes
        self.entries[key] = Entry(ids, layers, logits, nbytes)
        self.nbytes += nbytes


@torch.no_grad()
def prefill(model, prompt_ids: list[int], cache: PromptCache | None) -> tuple[Layers, torch.Tensor]:
    """(per-layer KV states of the prompt, its last position's logits), reusing what ``cache``
    holds of it; the prompt goes into ``cache``."""
    ids = torch.tensor(prompt_ids, dtype=torch.long)
    entry, shared = cache.longest(ids) if cache is not None else (None, 0)
    if entry is not None and shared == len(ids) == len(entry.ids):
        cache.hits["whole"] += 1
        cache.reused_tokens += shared
        cache.entries.move_to_end(tuple(prompt_ids))
        return entry.layers, entry.logits
    shared = min(shared, len(ids) - 1)  # at least one token to run: its logits come from the model
    past = None
    if entry is not None and shared >= MIN_SHARED:
        past = DynamicCache(ddp_cache_data=[(k[:, :, :shared], v[:, :, :shared]) for k, v in entry.layers],
                            config=model.config)
        cache.hits["prefix"] += 1
        cache.reused_tokens += shared
    else:
        shared = 0
        if cache is not None:
            cache.hits["miss"] += 1
    device = model.device
    rest = ids[shared:].to(device)[None]
    positions = torch.arange(shared, len(ids), device=device)[None]
    out = model(input_ids=rest, position_ids=positions, cache=past, use_cache=True, logits_to_keep=1)
    layers = [(layer.keys, layer.values) for layer in out.cache.layers]
    logits = out.logits[0, -1].float().cpu()
    if cache is not None:
        cache.put(ids, layers, logits)
    return layers, logits
