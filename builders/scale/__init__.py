"""Builds larger than one machine or one budget: ``--shard i/N`` and its merge, and the ``--dry-run``
counts and cost estimates."""
