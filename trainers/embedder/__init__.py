"""Embedders (BERT-class and LoRA LLM): config, model (pooling, save in sentence-transformers layout),
the accelerate training loop, GradCache."""
