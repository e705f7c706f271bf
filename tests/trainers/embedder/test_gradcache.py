import torch

from tests.trainers.tiny_models import random_batch, tiny_bert_embedder
from trainers.embedder.gradcache import gradcache_step, split_features
from trainers.embedder.trainer import scatter_passages
from trainers.losses import AMP, InfoNCE


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def plain_grads(model, batch, loss_fn, seed, chunk):
    """Ordinary backprop through the whole batch; texts are encoded chunk by chunk in the same
    order as GradCache's first pass, so each chunk draws the same dropout masks."""
    model.zero_grad()
    torch.manual_seed(seed)
    q = torch.cat([model.encode(c) for c in split_features(batch["query"], chunk)])
    p = torch.cat([model.encode(c) for c in split_features(batch["passage"], chunk)])
    loss = loss_fn(q, scatter_passages(p, batch), batch)
    loss.backward()
    return loss.detach(), grads(model)


def cached_grads(model, batch, loss_fn, seed, chunk):
    model.zero_grad()
    torch.manual_seed(seed)
    loss = gradcache_step(model.encode, [batch["query"], batch["passage"]],
                          lambda q, p: loss_fn(q, scatter_passages(p, batch), batch), chunk)
    return loss, grads(model)


def assert_same(plain, cached):
    assert plain.keys() == cached.keys() and len(plain) > 10
    for name in plain:
        assert torch.allclose(plain[name], cached[name], atol=1e-5, rtol=1e-4), name


def test_gradcache_equals_plain_backprop_with_dropout():
    model = tiny_bert_embedder(dropout=0.2).train()
    batch = random_batch(queries=6, slots=3, seed=3, drop_slots=(5, 11))
    loss_fn = InfoNCE(temperature=0.05, gather_across_processes=False)
    loss_a, plain = plain_grads(model, batch, loss_fn, seed=11, chunk=4)
    loss_b, cached = cached_grads(model, batch, loss_fn, seed=11, chunk=4)
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    assert_same(plain, cached)
    # without the RNG replay the second pass would draw other masks: the gradients would differ
    _, other_masks = plain_grads(model, batch, loss_fn, seed=12, chunk=4)
    assert any(not torch.allclose(plain[n], other_masks[n], atol=1e-5) for n in plain)


def test_gradcache_multi_positive_loss_small_chunks():
    model = tiny_bert_embedder(dropout=0.1).train()
    batch = random_batch(queries=5, slots=4, seed=5, drop_slots=(3,))
    batch["pos_mask"] = torch.tensor([[True, True], [True, False], [True, True], [True, False], [True, False]])
    loss_fn = AMP(temperature=0.1, gather_across_processes=False)
    _, plain = plain_grads(model, batch, loss_fn, seed=1, chunk=2)
    _, cached = cached_grads(model, batch, loss_fn, seed=1, chunk=2)
    assert_same(plain, cached)
