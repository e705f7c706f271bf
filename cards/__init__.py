"""hardneg cards."""
