"""Rerankers (cross-encoders and LoRA LLM rerankers): config, model (scoring head saved with the
model), the trainer (its build and step on the shared loop in ``trainers/trainer.py``)."""
