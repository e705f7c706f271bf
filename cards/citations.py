"""Every BibTeX entry hardneg's cards cite, in one table: the dataset card (methods, source data),
the model card (methods behind the training data, the loss, GradCache) and the losses read it.

Keys are short and lower-case; ``bibtex("clear", "infonce")`` joins entries for a card. ARHN is
arXiv 2604.11092 (authors from its arXiv page); CLEAR is an anonymous ICLR 2026 submission on
OpenReview (no author list published), cited as such by the cards and by the AMP / CMP losses.
"""

from __future__ import annotations

CITATIONS: dict[str, str] = {
    "rlhn": """@article{thakur2025rlhn,
  title={Fixing Data That Hurts Performance: Cascading LLMs to Relabel Hard Negatives for Robust Information Retrieval},
  author={Thakur, Nandan and Zhang, Crystina and Ma, Xueguang and Lin, Jimmy},
  journal={arXiv preprint arXiv:2505.16967},
  year={2025}
}""",
    "arhn": """@article{choi2026arhn,
  title={{ARHN}: Answer-Centric Relabeling of Hard Negatives with Open-Source {LLMs} for Dense Retrieval},
  author={Choi, Hyewon and Choi, Jooyoung and Jang, Hansol and Kim, Hyun and Yun, Chulmin and Jun, ChangWook and Choi, Stanley Jungkyu},
  journal={arXiv preprint arXiv:2604.11092},
  year={2026}
}""",
    "clear": r"""@misc{clear2025,
  title={{CLEAR}: Consistent Labeling Enhanced by {LLM}-driven Automated Re-labeling for Improved Information Retrieval},
  author={Anonymous},
  year={2025},
  howpublished={ICLR 2026 conference submission 15173, \url{https://openreview.net/forum?id=RCtNvnifve}},
  note={Under anonymous review. AMP = averaging multi-positive loss, CMP = confidence-weighted multi-positive loss}
}""",
    "nv-retriever": """@article{moreira2024nvretriever,
  title={NV-Retriever: Improving text embedding models with effective hard-negative mining},
  author={Moreira, Gabriel de Souza P. and Osmulski, Radek and Xu, Mengyao and Ak, Ronay and Schifferer, Benedikt and Oldridge, Even},
  journal={arXiv preprint arXiv:2407.15831},
  year={2024}
}""",
    "bge": """@misc{bge_embedding,
  title={C-Pack: Packaged Resources To Advance General Chinese Embedding},
  author={Shitao Xiao and Zheng Liu and Peitian Zhang and Niklas Muennighoff and Defu Lian and Jian-Yun Nie},
  year={2023},
  eprint={2309.07597},
  archivePrefix={arXiv}
}""",
    "infonce": """@inproceedings{oord2018cpc,
  title={Representation Learning with Contrastive Predictive Coding},
  author={van den Oord, Aaron and Li, Yazhe and Vinyals, Oriol},
  booktitle={arXiv preprint arXiv:1807.03748},
  year={2018}
}""",
    "dpr": """@inproceedings{karpukhin2020dpr,
  title={Dense Passage Retrieval for Open-Domain Question Answering},
  author={Karpukhin, Vladimir and Oguz, Barlas and Min, Sewon and Lewis, Patrick and Wu, Ledell and Edunov, Sergey and Chen, Danqi and Yih, Wen-tau},
  booktitle={Proceedings of EMNLP},
  year={2020}
}""",
    "gradcache": """@inproceedings{gao2021gradcache,
  title={Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup},
  author={Gao, Luyu and Zhang, Yunyi and Han, Jiawei and Callan, Jamie},
  booktitle={Proceedings of the 6th Workshop on Representation Learning for NLP},
  year={2021}
}""",
    "monobert": """@article{nogueira2019passage,
  title={Passage Re-ranking with BERT},
  author={Nogueira, Rodrigo and Cho, Kyunghyun},
  journal={arXiv preprint arXiv:1901.04085},
  year={2019}
}""",
    "lce": """@inproceedings{gao2021rethink,
  title={Rethink Training of BERT Rerankers in Multi-Stage Retrieval Pipeline},
  author={Gao, Luyu and Dai, Zhuyun and Callan, Jamie},
  booktitle={ECIR},
  year={2021}
}""",
}


def bibtex(*keys: str) -> str:
    """The entries for ``keys``, in order, each once, separated by a newline."""
    unknown = [k for k in keys if k not in CITATIONS]
    if unknown:
        raise KeyError(f"no citation for {unknown}; known: {sorted(CITATIONS)}")
    return "\n".join(CITATIONS[k] for k in dict.fromkeys(keys))
