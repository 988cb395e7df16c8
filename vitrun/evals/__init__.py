"""Evaluations: few-shot linear (closed form) and classification accuracy."""
