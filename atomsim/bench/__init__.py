"""The benchmark suite behind ``atomsim bench``: MPI step breakdown, network probe, performance model.

Library code only; the scripts that drive it and their results live under ``benchmarks/``.
"""
