"""RLHN: a cheap judge on every query, a strong judge on what it flags, then the refined configs."""
