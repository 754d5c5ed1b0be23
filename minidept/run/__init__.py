"""The training run around the core loop: options, the run folder, resume, signals, logging, torchrun, and
the `train`, `evaluate` and `predict` commands."""
