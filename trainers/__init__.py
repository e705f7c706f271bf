"""hardneg trainers."""
