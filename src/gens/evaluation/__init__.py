"""Evaluation of trained models: the paper's Section 5 experiments, one module each."""
