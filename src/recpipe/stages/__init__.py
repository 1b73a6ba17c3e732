"""One module per DVC stage, each with ``run(cfg, paths)``: thin wrappers over pure functions."""
