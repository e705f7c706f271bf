import math

import torch

from trainers.losses import AMP, CMP, InfoNCE


def batch_of(pos_mask, slots, pos_scores=None, slot_mask=None):
    pos_mask = torch.tensor(pos_mask, dtype=torch.bool)
    n = pos_mask.shape[0] * slots
    return {
        "pos_mask": pos_mask,
        "slot_mask": torch.ones(n, dtype=torch.bool) if slot_mask is None else torch.tensor(slot_mask),
        "pos_scores": torch.zeros(pos_mask.shape) if pos_scores is None else torch.tensor(pos_scores),
    }


def test_infonce_hand_computed():
    # 2 queries, group = 1 positive + 1 negative -> passages [p0, n0, p1, n1]
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [0.0, 0.0]])
    loss = InfoNCE(temperature=0.5, gather_across_processes=False)(q, p, batch_of([[True], [True]], 2))
    # query 0 scores (/0.5): [2, 1, 0, 0] target 0; query 1: [0, 1, 2, 0] target 2
    l0 = -2 + math.log(math.exp(2) + math.exp(1) + 1 + 1)
    l1 = -2 + math.log(1 + math.exp(1) + math.exp(2) + 1)
    assert abs(loss.item() - (l0 + l1) / 2) < 1e-6


def test_masked_slots_and_empty_negatives():
    # query 1 has no hard negative (hn_remove emptied it): its slot is masked, no NaN, in-batch still counts
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [9.0, 9.0]])
    loss = InfoNCE(0.5, False)(q, p, batch_of([[True], [True]], 2, slot_mask=[True, True, True, False]))
    l0 = -2 + math.log(math.exp(2) + math.exp(1) + 1)
    l1 = -2 + math.log(1 + math.exp(1) + math.exp(2))
    assert abs(loss.item() - (l0 + l1) / 2) < 1e-6
    # a single query with nothing to contrast: loss 0, finite gradient
    q1 = torch.tensor([[1.0, 0.0]], requires_grad=True)
    single = InfoNCE(0.5, False)(q1, torch.tensor([[1.0, 0.0], [0.0, 0.0]]),
                                 batch_of([[True]], 2, slot_mask=[True, False]))
    single.backward()
    assert single.item() == 0.0 and torch.isfinite(q1.grad).all()


def test_amp_with_one_positive_equals_infonce():
    torch.manual_seed(0)
    q, p = torch.randn(3, 8), torch.randn(3 * 4, 8)
    b = batch_of([[True]] * 3, 4)
    assert torch.allclose(AMP(0.05, False)(q, p, b), InfoNCE(0.05, False)(q, p, b))


def test_cmp_with_equal_confidences_equals_amp_and_differs_otherwise():
    torch.manual_seed(1)
    q, p = torch.randn(3, 8), torch.randn(3 * 5, 8)  # 3 positive slots + 2 negatives
    mask = [[True, True, False], [True, False, False], [True, True, True]]
    equal = batch_of(mask, 5, pos_scores=[[0.7, 0.7, 0.0], [0.2, 0.0, 0.0], [0.4, 0.4, 0.4]],
                     slot_mask=[True] * 2 + [False] + [True] * 2 + [True] + [False] * 2 + [True] * 2 + [True] * 5)
    amp, cmp = AMP(0.05, False)(q, p, equal), CMP(0.05, False)(q, p, equal)
    assert torch.allclose(amp, cmp, atol=1e-6)
    skewed = dict(equal, pos_scores=torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.0, 0.0], [0.1, 0.5, 0.9]]))
    assert not torch.allclose(CMP(0.05, False)(q, p, skewed), amp)


def test_other_positives_are_not_negatives():
    # query with two identical positives: each positive's loss must ignore the other one
    q = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    loss = AMP(1.0, False)(q, p, batch_of([[True, True]], 3))
    expected = -1 + math.log(math.exp(1) + 1)
    assert abs(loss.item() - expected) < 1e-6


def test_losses_carry_config_and_citation():
    for cls in (InfoNCE, AMP, CMP):
        loss = cls(0.02, True)
        assert loss.config == {"temperature": 0.02, "gather_across_processes": True}
        assert "@" in loss.citation and "title" in loss.citation
