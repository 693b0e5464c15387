"""The MD engine: config, system state, decomposition, halo exchange, run loop, I/O."""
