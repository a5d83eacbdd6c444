"""Rehearsals: the paper's experiments run offline on same-architecture models with random weights."""
