"""CLEAR: answer extraction, answer-token confidence scores, and relabel/augment/threshold decisions."""
