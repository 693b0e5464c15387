"""Compute kernels: neighbor lists, graph construction, message-passing ops."""
