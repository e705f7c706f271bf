"""Experiments: one command per question, each building with ``builders``, training with ``trainers`` and
writing its own ``results.md``. Experiments import the packages; the packages never import experiments."""
