"""Rerankers: losses by hand, cross-encoder and LLM rerankers train, save and reload with the same scores."""

import json
import math
from pathlib import Path

import pytest
import torch

from trainers.data import TrainGroups, load_rows
from trainers.losses import ListwiseCE, PointwiseBCE
from trainers.reranker.config import RerankerConfig
from trainers.reranker.model import (
    HEAD_CONTRACT_FILE,
    RerankerContractError,
    build_reranker,
    load_reranker,
    save_reranker,
)
from trainers.reranker.trainer import RerankerCollator, score_grid, train

ROWS = Path(__file__).parents[2] / "fixtures" / "rlhn" / "fiqa.stage_1.gpt-4o-mini.jsonl"
BEIR_SMALL = Path(__file__).parents[2] / "fixtures" / "beir-small"
CONFIGS = Path(__file__).parents[3] / "trainers" / "configs"
PAIRS = [
    ("how are bonds taxed", "Interest from corporate bonds is taxed as ordinary income in most countries."),
    ("how are bonds taxed", "The cat sat on the mat."),
    ("what is an index fund", "An index fund tracks a market index such as the S&P 500 at low cost."),
]


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    from tests.trainers.tiny_llm import build_tiny_qwen2

    return build_tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2"))


def ce_config(tmp_path, **kw) -> RerankerConfig:
    base = dict(kind="cross_encoder", model="minilm", group_size=3, max_length=64, per_device_train_batch_size=2,
                learning_rate=5e-5,
                max_steps=2, dataset=str(ROWS), max_rows=4, output_dir=str(tmp_path / "run"), logging_steps=1)
    return RerankerConfig(**{**base, **kw})


def llm_config(tmp_path, model_dir, head, **kw) -> RerankerConfig:
    base = dict(kind="llm_reranker", model=str(model_dir), head=head, group_size=3, max_length=48,
                per_device_train_batch_size=2, learning_rate=1e-2, max_steps=2, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                lora_target_modules=["q_proj", "v_proj"], dataset=str(ROWS), max_rows=4,
                output_dir=str(tmp_path / "run"), logging_steps=1)
    return RerankerConfig(**{**base, **kw})


def one_training_step(cfg: RerankerConfig):
    """Build the training module, take one optimizer step on fixture groups, return it in eval mode."""
    torch.manual_seed(0)
    reranker = build_reranker(cfg)
    groups = TrainGroups(load_rows(cfg.dataset, max_rows=cfg.max_rows), cfg.num_negatives, "sample", 1, cfg.seed)
    batch = RerankerCollator(reranker, cfg.group_size)([groups[0], groups[1]])
    loss = ListwiseCE()(score_grid(reranker(**batch["inputs"]), batch), batch["mask"])
    loss.backward()
    torch.optim.SGD([p for p in reranker.parameters() if p.requires_grad], lr=cfg.learning_rate).step()
    return reranker.eval()


# ---------------------------------------------------------------- losses
def test_listwise_ce_by_hand_and_masked_slots_ignored():
    scores = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, -50.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    row0 = -(2.0 - math.log(math.exp(2) + math.exp(1) + 1))
    row1 = -(0.0 - math.log(1 + math.exp(3)))  # the masked -50 slot takes no part
    assert ListwiseCE()(scores, mask).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    # a masked slot with a huge score still does not count
    scores2 = scores.clone()
    scores2[1, 2] = 1e4
    assert ListwiseCE()(scores2, mask).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_pointwise_bce_by_hand():
    scores = torch.tensor([[1.0, -1.0, 2.0], [0.5, 0.0, 9.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])

    def bce(x, y):
        p = 1 / (1 + math.exp(-x))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    expected = (bce(1.0, 1) + bce(-1.0, 0) + bce(2.0, 0) + bce(0.5, 1) + bce(0.0, 0)) / 5
    assert PointwiseBCE()(scores, mask).item() == pytest.approx(expected, rel=1e-6)


def test_collator_keeps_positive_first_and_masks_missing_negatives():
    class Stub:
        def encode(self, pairs):
            return {"n": torch.tensor(len(pairs))}

    from trainers.data import Group

    groups = [Group("q1", ["p1"], ["n1", "n2"]), Group("q2", ["p2"], [])]  # q2: hn_remove emptied it
    batch = RerankerCollator(Stub(), group_size=3)(groups)
    assert batch["mask"].tolist() == [[True, True, True], [True, False, False]]
    assert batch["slot_index"].tolist() == [0, 1, 2, 3]
    grid = score_grid(torch.tensor([1.0, 2.0, 3.0, 4.0]), batch)
    assert grid.tolist() == [[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]]


# ---------------------------------------------------------------- cross-encoder
def test_cross_encoder_reloads_in_crossencoder_with_identical_scores(tmp_path):
    from sentence_transformers import CrossEncoder

    reranker = one_training_step(ce_config(tmp_path))
    expected = torch.tensor(reranker.predict(PAIRS))
    out = save_reranker(reranker, tmp_path / "ce")
    ce = CrossEncoder(str(out), device="cpu")
    got = torch.as_tensor(ce.predict(PAIRS))
    assert torch.allclose(got, torch.sigmoid(expected), atol=1e-5)
    raw = torch.as_tensor(ce.predict(PAIRS, activation_fn=torch.nn.Identity()))
    assert torch.allclose(raw, expected, atol=1e-4)
    assert torch.allclose(torch.tensor(load_reranker(out, device="cpu").predict(PAIRS)), expected, atol=1e-5)


@pytest.mark.parametrize("loss", ["listwise", "pointwise"])
def test_cross_encoder_trains_and_writes_model_and_card(tmp_path, loss):
    evaluate = {"eval_beir_dir": str(BEIR_SMALL), "eval_top_k": 5} if loss == "listwise" else {}
    model_dir = train(ce_config(tmp_path, loss=loss, **evaluate))
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2]
    assert all(math.isfinite(entry["loss"]) and entry["loss"] > 0 for entry in log)
    contract = json.loads((model_dir / HEAD_CONTRACT_FILE).read_text())
    assert contract["kind"] == "cross_encoder" and contract["max_length"] == 64
    assert "loss: " + loss in (model_dir / "training_config.yaml").read_text()
    card = (model_dir / "README.md").read_text()
    assert ("ListwiseCE" if loss == "listwise" else "PointwiseBCE") in card
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in card
    assert len(load_reranker(model_dir, device="cpu").predict(PAIRS)) == len(PAIRS)
    if evaluate:  # first stage (MiniLM) top-5 reranked by the trained cross-encoder
        metrics = json.loads((tmp_path / "run" / "train_summary.json").read_text())["metrics"]
        assert set(metrics) == {"first_stage", "reranked"}
        assert metrics["reranked"]["recall@5"] == pytest.approx(metrics["first_stage"]["recall@5"])
        assert "| reranked |" in card


@pytest.mark.parametrize("name", ["minilm-cross-encoder-cpu", "cross-encoder", "qwen2.5-3b-llm-reranker"])
def test_shipped_reranker_configs_load(name):
    from trainers.config_io import load_config

    cfg = load_config(RerankerConfig, CONFIGS / f"{name}.yaml", ["--learning_rate", "1e-5"])
    assert cfg.learning_rate == 1e-5 and cfg.group_size >= 2
    assert cfg.kind == ("llm_reranker" if "llm" in name else "cross_encoder")


# ---------------------------------------------------------------- LLM rerankers
@pytest.mark.parametrize("head", ["causal_yes_no", "sequence_classification"])
def test_llm_reranker_lora_saves_adapter_and_merged_with_same_scores(tmp_path, tiny_qwen, head):
    reranker = one_training_step(llm_config(tmp_path, tiny_qwen, head))
    expected = torch.tensor(reranker.predict(PAIRS))
    out = save_reranker(reranker, tmp_path / "llm")
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "model.safetensors").is_file()
    merged = torch.tensor(load_reranker(out, device="cpu").predict(PAIRS))
    assert torch.allclose(merged, expected, atol=1e-4)
    # the same folder served from base + adapter (contract says: not merged)
    contract = json.loads((out / HEAD_CONTRACT_FILE).read_text())
    (out / HEAD_CONTRACT_FILE).write_text(json.dumps({**contract, "merged": False}))
    from_adapter = torch.tensor(load_reranker(out, device="cpu").predict(PAIRS))
    assert torch.allclose(from_adapter, expected, atol=1e-4)


def test_llm_scores_follow_the_saved_contract_not_the_tokenizer(tmp_path, tiny_qwen):
    reranker = one_training_step(llm_config(tmp_path, tiny_qwen, "causal_yes_no", lora_r=0, merge_on_save=False))
    out = save_reranker(reranker, tmp_path / "llm")
    contract = json.loads((out / HEAD_CONTRACT_FILE).read_text())
    assert contract["yes_token_id"] == reranker.tokenizer.encode(" yes")[0]
    assert "{document}" in contract["template"] and contract["padding_side"] == "left"
    scores = torch.tensor(load_reranker(out, device="cpu").predict(PAIRS))
    swapped = {**contract, "yes_token_id": contract["no_token_id"], "no_token_id": contract["yes_token_id"]}
    (out / HEAD_CONTRACT_FILE).write_text(json.dumps(swapped))
    assert torch.allclose(torch.tensor(load_reranker(out, device="cpu").predict(PAIRS)), -scores, atol=1e-5)
    (out / HEAD_CONTRACT_FILE).unlink()
    with pytest.raises(RerankerContractError, match="reranker_head.json is missing"):
        load_reranker(out)


def test_llm_score_does_not_depend_on_batch_padding(tmp_path, tiny_qwen):
    reranker = build_reranker(llm_config(tmp_path, tiny_qwen, "causal_yes_no")).eval()
    alone = reranker.predict(PAIRS[1:2])
    padded = reranker.predict(PAIRS)  # PAIRS[1] is the shortest: left-padded in this batch
    assert padded[1] == pytest.approx(alone[0], abs=1e-5)
    # an overlong passage is cut, the closing question survives
    enc = reranker.encode([("q", "word " * 500)])
    assert enc["input_ids"].shape[1] == 48
    tail = reranker.tokenizer.encode(reranker.contract.template.split("{document}")[1], add_special_tokens=False)
    assert enc["input_ids"][0, -len(tail):].tolist() == tail


def test_llm_reranker_trainer_end_to_end(tmp_path, tiny_qwen):
    model_dir = train(llm_config(tmp_path, tiny_qwen, "causal_yes_no", dataset_config=None))
    assert (model_dir / "adapter" / "adapter_config.json").is_file()
    card = (model_dir / "README.md").read_text()
    assert "reranker_head.json" in card and "causal_yes_no" in card
    assert len(load_reranker(model_dir, device="cpu").predict(PAIRS)) == 3


def test_yes_token_must_be_one_token(tmp_path, tiny_qwen):
    with pytest.raises(ValueError, match="exactly one token"):
        build_reranker(llm_config(tmp_path, tiny_qwen, "causal_yes_no", yes_token=" absolutely-yes"))


@pytest.mark.parametrize("resume_at", [3, 4])  # 3 steps per epoch: at the epoch boundary / inside epoch 1
def test_reranker_resumes_from_checkpoint_to_the_same_model(tmp_path, tiny_qwen, resume_at):
    import shutil

    from safetensors.torch import load_file

    def config(name):
        return llm_config(tmp_path / name, tiny_qwen, "causal_yes_no", max_rows=6, max_steps=5, save_steps=1,
                          lora_dropout=0.1)

    full = train(config("a"))
    # a run that died after step `resume_at`: only that checkpoint survives; rerunning the same config
    # resumes there with the same groups, batch order and dropout draws
    resumed_dir = tmp_path / "b" / "run"
    (resumed_dir / "checkpoints").mkdir(parents=True)
    ckpt = f"step-{resume_at}"
    shutil.copytree(tmp_path / "a" / "run" / "checkpoints" / ckpt, resumed_dir / "checkpoints" / ckpt)
    resumed = train(config("b"))
    log_a = [json.loads(line) for line in (tmp_path / "a" / "run" / "train_log.jsonl").read_text().splitlines()]
    log_b = [json.loads(line) for line in (resumed_dir / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log_b] == list(range(resume_at + 1, 6))
    assert [e["loss"] for e in log_b] == pytest.approx([e["loss"] for e in log_a[resume_at:]], abs=1e-6)
    a = load_file(full / "adapter" / "adapter_model.safetensors")
    b = load_file(resumed / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_gradient_accumulation_matches_the_larger_batch(tmp_path, tiny_qwen):
    """Listwise CE is a mean over groups: 2 micro-batches of 2 accumulated are one batch of 4, step for step
    (no dropout; scores do not depend on the batch's padding, see above)."""
    from safetensors.torch import load_file

    def run(name, batch, accumulate):
        return train(llm_config(tmp_path / name, tiny_qwen, "causal_yes_no", max_rows=8, max_steps=2,
                                per_device_train_batch_size=batch, gradient_accumulation_steps=accumulate))

    whole, accumulated = run("whole", 4, 1), run("accumulated", 2, 2)
    logs = [[json.loads(line) for line in (tmp_path / name / "run" / "train_log.jsonl").read_text().splitlines()]
            for name in ("whole", "accumulated")]
    assert [e["step"] for e in logs[1]] == [1, 2]
    assert [e["loss"] for e in logs[1]] == pytest.approx([e["loss"] for e in logs[0]], abs=1e-5)
    assert [e["lr"] for e in logs[1]] == [e["lr"] for e in logs[0]]
    a = load_file(whole / "adapter" / "adapter_model.safetensors")
    b = load_file(accumulated / "adapter" / "adapter_model.safetensors")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
