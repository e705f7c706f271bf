"""Batched decoding for the local judge: the sequences of several requests decoded together.

Each request is prefilled on its own (``prompt_cache.prefill``: on 2 CPU cores a prompt's prefill
is compute-bound, 1.60 s for 470 tokens alone vs 1.57 s each in a batch of 4 or 8, so batching it
buys nothing, while one prompt at a time can start from a cached prefix) and then joins the
``DecodeBatch``: its KV states are copied into a free slot of the batch's buffers, right-aligned
(left padding, masked out), and every step feeds each row's last token at that row's own
position. Decoding is memory-bound at batch 1 (63 ms a step for SmolLM2-135M on one thread,
116 ms for 8 rows), which is what batching buys. Each ``Sequence`` keeps its own regex state,
seed, stop strings and ``max_new_tokens``; a finished one leaves the batch (its slot is freed).
A row stops as soon as one of its stop strings appears (``completion_tokens`` counts the tokens
generated up to there; the text is cut after the stop string, as before).

Choosing a token is ``constrained.py``'s rule, row by row, after one batched top-k: greedy
(``temperature <= 0``) takes the best acceptable candidate; sampling takes the first acceptable
one in Gumbel-perturbed order from the row's own seeded generator (an exact sample, and the same
whatever else is in the batch). An unconstrained greedy row takes the arg-max, as
``model.generate`` does.
"""

from __future__ import annotations

import regex
import torch
from transformers.cache_utils import Cache, DynamicLayer

from builders.judges.endpoints.base import GenerateRequest, Generation
from builders.judges.endpoints.constrained import _END, TokenTexts, _first_acceptable, _narrowed_order, candidate_scores

FIRST_LOOK = 64  # candidates of a constrained row tried from the top-k before the narrowed full sort


class BufferLayer(DynamicLayer):
    """A layer's KV states in a preallocated buffer ``[batch, heads, capacity, dim]``: a step
    writes its new column in place (``DynamicLayer`` concatenates, copying the whole cache every
    step: 149 vs 116 ms a step for 8 rows of ~500 tokens). ``keys`` / ``values`` are views of
    the filled columns, so masks and lengths read as for a ``DynamicLayer``."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int):
        super().__init__()
        self.device = keys.device
        self.is_initialized = True
        self.buffers = (keys, values)
        self._set_length(length)

    def _set_length(self, length: int) -> None:
        self.length = length
        self.keys, self.values = (b[:, :, :length] for b in self.buffers)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        if end > self.buffers[0].shape[-2]:  # past the planned capacity: grow (not expected)
            grown = []
            for b in self.buffers:
                bigger = b.new_zeros(*b.shape[:2], max(end, 2 * b.shape[-2]), b.shape[-1])
                bigger[:, :, : self.length] = b[:, :, : self.length]
                grown.append(bigger)
            self.buffers = tuple(grown)
        self.buffers[0][:, :, self.length:end] = key_states
        self.buffers[1][:, :, self.length:end] = value_states
        self._set_length(end)
        return self.keys, self.values


def buffer_cache(layers: list[tuple[torch.Tensor, torch.Tensor]], length: int) -> Cache:
    return Cache(layers=[BufferLayer(k, v, length) for k, v in layers])


class Sequence:
    """One request being decoded: its prompt, constraint state, generated tokens and answer."""

    def __init__(self, request: GenerateRequest, prompt_ids: list[int], max_new_tokens: int, vocab: TokenTexts,
                 eos: set[int], future=None):
        self.request = request
        self.prompt_ids = prompt_ids
        self.max_new_tokens = max_new_tokens
        self.vocab = vocab
        self.eos = eos
        self.future = future
        constrained = request.constraint is not None and request.constraint.kind == "regex"
        self.compiled = regex.compile(str(request.constraint.value), regex.DOTALL) if constrained else None
        self.generator = None
        if request.temperature > 0:
            self.generator = torch.Generator(device="cpu").manual_seed(request.seed if request.seed is not None else 0)
        self.tokens: list[int] = []
        self.text = ""  # the tokens' texts as the constraint and stop strings see them
        self.finish: str | None = None
        self.position = len(prompt_ids)  # position of the next token fed to the model

    @property
    def done(self) -> bool:
        return self.finish is not None

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """The order this row tries candidates in (``constrained.candidate_scores``)."""
        if self.compiled is not None:
            logits = logits[: len(self.vocab.texts)]
        return candidate_scores(logits, self.request.temperature, self.generator)

    def take(self, scores: torch.Tensor, top: list[int]) -> None:
        """Choose the next token from this row's ``scores`` (``top``: its best ids, best first)."""
        if self.compiled is None:
            self._append(top[0])
            if top[0] in self.eos:
                self.finish = "eos_token"
            return
        full_match = self.compiled.fullmatch(self.text) is not None
        chosen = _first_acceptable(top, self.compiled, self.text, full_match, self.vocab, self.eos)
        if chosen is None and len(top) < scores.shape[0]:
            rest = _narrowed_order(scores, self.compiled, self.text, full_match, self.vocab, self.eos, top)
            chosen = _first_acceptable(rest, self.compiled, self.text, full_match, self.vocab, self.eos)
        if chosen == _END:
            self.finish = "eos_token"
        elif chosen is None:
            self.finish = "no_valid_token"
        else:
            self._append(chosen)

    def _append(self, token: int) -> None:
        self.tokens.append(token)
        if self.compiled is not None or self.request.stop:
            self.text += self.vocab.texts[token] if token < len(self.vocab.texts) else ""
        if any(stop in self.text for stop in self.request.stop):
            self.finish = "stop_sequence"
        elif len(self.tokens) >= self.max_new_tokens:
            self.finish = "length"

    def choose(self, logits: torch.Tensor) -> None:
        """One row on its own (the first token, from the prefill's logits ``[vocab]``)."""
        choose_rows([self], logits[None])

    def generation(self, tokenizer, device: str) -> Generation:
        """The answer as ``LocalBackend`` reports it (the unbatched path's text and counts)."""
        meta: dict = {"device": device}
        if self.compiled is not None:
            text, completion, finish = self.text, len(self.tokens), self.finish
            meta["constraint"] = "enforced"
        else:
            if self.request.constraint is not None:
                meta["constraint"] = "not enforced"
            ended = bool(self.tokens) and self.tokens[-1] in self.eos
            completion = len(self.tokens)
            text = tokenizer.decode(self.tokens[:-1] if ended else self.tokens, skip_special_tokens=True)
            finish = "eos_token" if ended else "length"
        for stop in self.request.stop:
            at = text.find(stop)
            if at >= 0:
                text, finish = text[: at + len(stop)], "stop_sequence"
                break
        return Generation(text=text, finish_reason=finish, prompt_tokens=len(self.prompt_ids),
                          completion_tokens=completion, meta=meta)


def choose_rows(rows: list[Sequence], logits: torch.Tensor) -> None:
    """Each row's next token from its logits (``[rows, vocab]``): greedy rows share one top-k
    (constrained) or arg-max (unconstrained); a sampling row perturbs its own logits with its
    own generator first. Then each row runs its own acceptance checks."""
    greedy = [i for i, r in enumerate(rows) if r.generator is None]
    tops: dict[int, list[int]] = {}
    if any(rows[i].compiled is not None for i in greedy):
        size = len(rows[0].vocab.texts)
        picked = torch.topk(logits[greedy, :size], min(FIRST_LOOK, size)).indices.tolist()
        tops.update(zip(greedy, picked))
    best = logits[greedy].argmax(-1).tolist() if greedy else []
    for i, b in zip(greedy, best):
        if rows[i].compiled is None:
            tops[i] = [b]
    for i, row in enumerate(rows):
        scores = row.scores(logits[i])
        if i not in tops:  # sampling: its own perturbed order
            tops[i] = (torch.topk(scores, min(FIRST_LOOK, scores.shape[0])).indices.tolist() if row.compiled is not None
                       else [int(scores.argmax())])
        row.take(scores, tops[i])


class DecodeBatch:
    """Rows decoded together, in slots of KV buffers shared by every layer's column index.

    A row's prompt states sit right-aligned before the current column (left padding, masked
    out); a longer prompt moves the current column on, and the other rows see the skipped
    columns masked. Joining writes one row into a free slot and leaving frees it: no copy of
    the other rows (copying the batch's states at each join and leave cost ~60 ms a time). The
    buffers are rebuilt (each row's used columns copied, one layer at a time) only when rows
    outnumber the slots, the columns run out, or at most half the slots are in use.
    A free slot is still computed (it attends to its own column only, so its states stay
    finite): with decoding memory-bound, an idle slot costs far less than a rebuild."""

    SLACK = 64  # columns beyond the planned need, so later prompts can join without a rebuild

    def __init__(self, model):
        self.model = model
        self.slots: list[Sequence | None] = []
        self.cache: Cache | None = None
        self.mask: torch.Tensor | None = None  # [slots, columns]: 1 where a column holds that row's token

    @property
    def rows(self) -> list[Sequence]:
        return [r for r in self.slots if r is not None]

    def __len__(self) -> int:
        return sum(r is not None for r in self.slots)

    @property
    def width(self) -> int:
        return 0 if self.mask is None else self.mask.shape[1]

    def admit(self, joining: list[tuple[Sequence, list[tuple[torch.Tensor, torch.Tensor]]]]) -> None:
        """Add prefilled rows: ``(sequence, per-layer (keys, values) of its prompt, [1, heads, n, dim])``."""
        if not joining:
            return
        longest = max(len(seq.prompt_ids) for seq, _ in joining)
        remaining = max(r.max_new_tokens - len(r.tokens) for r in self.rows + [s for s, _ in joining]) + 1
        free = [i for i, r in enumerate(self.slots) if r is None]
        if (self.cache is None or len(free) < len(joining)
                or max(self.width, longest) + remaining > self.cache.layers[0].buffers[0].shape[-2]):
            k, v = joining[0][1][0]
            self._rebuild(len(self) + len(joining), (k, v), len(joining[0][1]), longest, remaining)
            free = [i for i, r in enumerate(self.slots) if r is None]
        widest = max(self.width, longest)
        if widest > self.width:  # a longer prompt: the others see the new columns masked
            self.mask = torch.cat([self.mask, self.mask.new_zeros(len(self.slots), widest - self.width)], dim=1)
            for layer in self.cache.layers:
                layer._set_length(widest)
        for (seq, kv), slot in zip(joining, free):
            n = len(seq.prompt_ids)
            for layer, states in zip(self.cache.layers, kv):
                for buffer, state in zip(layer.buffers, states):
                    buffer[slot, :, widest - n: widest] = state[0]
            self.mask[slot] = 0
            self.mask[slot, widest - n:] = 1
            self.slots[slot] = seq

    def _rebuild(self, slots: int, like: tuple[torch.Tensor, torch.Tensor], layers: int, longest: int, remaining: int) -> None:
        """New buffers of ``slots`` rows (``like``: a layer's keys and values, for their heads,
        dim and dtype), the rows held now first with their used columns only, and room for a
        ``longest``-token prompt and ``remaining`` more steps. One layer at a time: the old
        buffers of a layer go once it is copied."""
        kept = [i for i, r in enumerate(self.slots) if r is not None]
        start = min((int(self.mask[i].argmax()) for i in kept), default=self.width)  # leading columns no row uses
        width = self.width - start
        capacity = max(width, longest) + remaining + self.SLACK
        mask = torch.zeros(slots, width, dtype=torch.long)
        if kept:
            mask[: len(kept)] = self.mask[kept, start:]
        index = torch.tensor(kept, dtype=torch.long)
        old = self.cache.layers if self.cache is not None else [None] * layers
        new_layers = []
        for layer in old:
            buffers = []
            for which, sample in enumerate(like):
                buffer = sample.new_zeros(slots, sample.shape[1], capacity, sample.shape[-1])
                if kept:
                    buffer[: len(kept), :, :width] = layer.buffers[which][index, :, start: self.width]
                buffers.append(buffer)
            if layer is not None:
                layer.buffers = ()
            new_layers.append(tuple(buffers))
        self.slots = [self.slots[i] for i in kept] + [None] * (slots - len(kept))
        self.mask, self.cache = mask, buffer_cache(new_layers, width)

    def drop_finished(self) -> list[Sequence]:
        """Free the slots of finished rows -> those rows. At most half the slots left in use:
        the buffers shrink to the rows left; none left: they are released."""
        finished = [r for r in self.slots if r is not None and r.done]
        if not finished:
            return []
        self.slots = [None if r is not None and r.done else r for r in self.slots]
        active = len(self)
        if active == 0:
            self.slots, self.cache, self.mask = [], None, None
        elif active <= len(self.slots) // 2:
            like = tuple(b[:1, :, :1].clone() for b in self.cache.layers[0].buffers)
            remaining = max(r.max_new_tokens - len(r.tokens) for r in self.rows) + 1
            self._rebuild(active, like, len(self.cache.layers), 0, remaining)
        return finished

    @torch.no_grad()
    def step(self) -> None:
        """Feed every row its last token; each row chooses its next one."""
        device = self.model.device
        input_ids = torch.tensor([[r.tokens[-1] if r is not None else 0] for r in self.slots], device=device)
        positions = torch.tensor([[r.position if r is not None else 0] for r in self.slots], device=device)
        self.mask = torch.cat([self.mask, torch.ones(len(self.slots), 1, dtype=torch.long)], dim=1)
        out = self.model(input_ids=input_ids, attention_mask=self.mask.to(device), position_ids=positions,
                         cache=self.cache, use_cache=True)
        used = [i for i, r in enumerate(self.slots) if r is not None]
        for i in used:
            self.slots[i].position += 1
        self.mask[[i for i, r in enumerate(self.slots) if r is None], -1] = 0  # a free slot's own column: not a token
        choose_rows([self.slots[i] for i in used], out.logits[used, -1].float().cpu())
