"""Embedders (BERT-class and LoRA LLM): config, model (pooling, save in sentence-transformers layout),
the trainer (its build and step on the shared loop in ``trainers/trainer.py``), GradCache."""
