import json

import pytest
import torch
from sentence_transformers import SentenceTransformer

from trainers.embedder.config import EmbedderConfig
from trainers.embedder.model import Embedder, pool

TEXTS = ["Does receiving a 1099-MISC require filing a tax return?",
         "what is the capital of france", "a much longer passage about dividends, brokerage statements "
         "and the deadlines for furnishing form 1099-B to recipients in the next tax season"]


def test_pooling_modes_and_padding_sides():
    torch.manual_seed(0)
    hidden = torch.randn(2, 4, 3)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert torch.allclose(pool(hidden, right, "mean")[0], hidden[0, :2].mean(0))
    assert torch.equal(pool(hidden, right, "cls"), hidden[:, 0])
    assert torch.equal(pool(hidden, right, "last"), torch.stack([hidden[0, 1], hidden[1, 3]]))
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert torch.equal(pool(hidden, left, "last"), torch.stack([hidden[0, 3], hidden[1, 3]]))
    with pytest.raises(ValueError, match="pooling"):
        pool(hidden, right, "max")


@pytest.mark.parametrize("pooling,normalize", [("mean", True), ("cls", False)])
def test_save_reloads_in_sentence_transformers_with_identical_embeddings(tmp_path, pooling, normalize):
    cfg = EmbedderConfig(model="minilm", pooling=pooling, normalize=normalize, query_prefix="query: ",
                         passage_prefix="passage: ", query_max_len=32, passage_max_len=48)
    emb = Embedder.from_config(cfg)
    with torch.no_grad():  # move the weights off the pretrained ones, as training would
        for p in emb.parameters():
            p.add_(0.01 * torch.randn_like(p))
    emb.eval()
    path = emb.save(tmp_path / "model", extra_prompts={"fiqa": "Represent this financial question: "})
    st = SentenceTransformer(str(path), device="cpu")
    assert st.max_seq_length == 48
    assert st.prompts["query"] == "query: " and st.prompts["fiqa"].startswith("Represent")
    for ours, theirs in ((emb.embed_queries(TEXTS), st.encode_query(TEXTS, convert_to_tensor=True)),
                         (emb.embed_passages(TEXTS), st.encode_document(TEXTS, convert_to_tensor=True))):
        assert (ours - theirs.cpu()).abs().max().item() < 1e-5
    assert (emb.embed_queries(TEXTS) - emb.embed_passages(TEXTS)).abs().max() > 1e-3  # prefixes matter
    pooling_cfg = json.loads((path / "1_Pooling" / "config.json").read_text())
    assert pooling_cfg[{"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token"}[pooling]]
    assert (path / "2_Normalize").exists() == normalize
