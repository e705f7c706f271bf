"""hardneg cards: generated dataset cards (and, from the trainers, model cards)."""
