import json

import torch
from peft import PeftModel
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer

from tests.trainers.refined_data import fixture_rows, write_refined
from tests.trainers.tiny_models import save_tiny_qwen2
from trainers.embedder.config import EmbedderConfig
from trainers.embedder.model import Embedder
from trainers.embedder.trainer import train

QUERIES = ["is a 1099 form taxable income", "how do brokerages report dividends"]


def test_tiny_qwen2_trains_as_lora_embedder_saves_adapters_and_merged(tmp_path):
    rows = fixture_rows(8, passage_chars=200)
    texts = [r["query"] for r in rows] + [p["text"] for r in rows for p in r["positive_passages"]]
    base = save_tiny_qwen2(tmp_path / "base", texts)
    data = write_refined(tmp_path / "data", {"rlhn": rows})
    cfg = EmbedderConfig(model=base, pooling="last", query_prefix="query: ", passage_prefix="passage: ",
                         query_max_len=24, passage_max_len=48, group_size=3, per_device_train_batch_size=4, learning_rate=5e-3,
                         max_steps=3, temperature=0.05, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                         lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj"],
                         dataset=str(data), dataset_config="rlhn", output_dir=str(tmp_path / "run"),
                         logging_steps=1)
    model_dir = train(cfg)

    adapter = model_dir / "adapter"
    assert (adapter / "adapter_config.json").exists()
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
    # the adapter reloads on the base model and gives the merged folder's embeddings
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    assert tokenizer("hello")["input_ids"][-1] == tokenizer.eos_token_id  # EOS appended, saved with the model
    reloaded = Embedder(PeftModel.from_pretrained(AutoModel.from_pretrained(base), str(adapter)), tokenizer,
                        pooling="last", normalize=True, query_prefix="query: ", passage_prefix="passage: ",
                        max_seq_length=48).eval()
    st = SentenceTransformer(str(model_dir), device="cpu")
    ours = reloaded.embed_queries(QUERIES)
    theirs = st.encode_query(QUERIES, convert_to_tensor=True).cpu()
    assert (ours - theirs).abs().max().item() < 1e-5
    # training moved the embeddings away from the base model's
    untouched = Embedder(AutoModel.from_pretrained(base), tokenizer, pooling="last", query_prefix="query: ",
                         max_seq_length=48).eval()
    assert (untouched.embed_queries(QUERIES) - ours).abs().max().item() > 1e-4
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3] and all(torch.isfinite(torch.tensor(e["loss"])) for e in log)
