"""Tensor parallelism: the process group of this rank and its collectives."""
