"""Rerankers (cross-encoders and LoRA LLM rerankers): config, model (scoring head saved with the
model), the accelerate training loop."""
