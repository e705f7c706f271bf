"""GradCache (Gao et al., 2021): contrastive loss over a large batch in bounded activation memory.

1. Encode queries and passages in chunks WITHOUT a graph, remembering each chunk's RNG state.
2. Compute the loss on the detached representations (leaf tensors) and backpropagate it to them:
   this gives d loss / d rep for every representation of the whole (gathered) batch.
3. Re-encode chunk by chunk WITH a graph, replaying the chunk's RNG state so dropout masks are
   the ones of step 1, and backpropagate ``(rep * cached_grad).sum()``: by the chain rule the
   parameters receive exactly the gradient of the full-batch loss.

Peak activation memory is one chunk's graph instead of the whole batch's. ``backward`` and
``no_sync`` are passed in (the trainer passes accelerate's), so gradient synchronisation across
processes happens once, on the last chunk. ``tests/trainers/embedder/test_gradcache.py`` checks the
gradients against plain backpropagation with dropout on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from cards.citations import CITATIONS

CITATION = CITATIONS["gradcache"]


class RngState:
    """The CPU (and CUDA, when the inputs are on a GPU) RNG state at construction, replayable."""

    def __init__(self, device: torch.device):
        self.cpu = torch.get_rng_state()
        self.device = device if device.type == "cuda" else None
        self.cuda = torch.cuda.get_rng_state(device) if self.device is not None else None

    @contextlib.contextmanager
    def replay(self):
        devices = [self.device] if self.device is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.device is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


def split_features(features: dict, chunk_size: int) -> list[dict]:
    n = features["input_ids"].shape[0]
    return [{k: v[i: i + chunk_size] for k, v in features.items()} for i in range(0, n, chunk_size)]


def gradcache_step(encode: Callable[[dict], torch.Tensor], inputs: list[dict],
                   loss_fn: Callable[..., torch.Tensor], chunk_size: int,
                   backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
                   no_sync: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                   loss_scale: float = 1.0) -> torch.Tensor:
    """One GradCache step over several inputs (e.g. ``[query_features, passage_features]``).

    ``loss_fn(*reps)`` receives one representation tensor per input. Gradients of
    ``loss * loss_scale`` are accumulated into the parameters; the (unscaled) loss is returned.
    """
    chunks = [split_features(f, chunk_size) for f in inputs]
    reps, states = [], []
    with torch.no_grad():
        for input_chunks in chunks:
            parts, rng = [], []
            for chunk in input_chunks:
                rng.append(RngState(chunk["input_ids"].device))
                parts.append(encode(chunk))
            reps.append(torch.cat(parts))
            states.append(rng)

    leaves = [r.detach().requires_grad_() for r in reps]
    loss = loss_fn(*leaves)
    torch.autograd.backward(loss * loss_scale, inputs=leaves)
    cached = [leaf.grad for leaf in leaves]

    flat = [(i, j) for i, input_chunks in enumerate(chunks) for j in range(len(input_chunks))]
    for n, (i, j) in enumerate(flat):
        chunk = chunks[i][j]
        grad = cached[i][j * chunk_size: j * chunk_size + chunk["input_ids"].shape[0]]
        sync = contextlib.nullcontext() if n == len(flat) - 1 else no_sync()
        with sync, states[i][j].replay():
            rep = encode(chunk)
            backward(torch.dot(rep.flatten().float(), grad.flatten().float()))
    return loss.detach()
