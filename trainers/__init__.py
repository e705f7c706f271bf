"""hardneg trainers: ``train.py`` (entry) reads a config (``config.py`` fields, ``config_io.py`` parser) and runs
the one loop (``trainer.py``) with an embedder or a reranker (``embedder/``, ``reranker/``) on refined data
(``data.py``) with a loss from ``losses/``; ``evaluate.py`` and ``publish.py`` after it."""
