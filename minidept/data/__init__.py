"""Data around the core: the tasks and their casting (`tasks.py`), the metrics (`metrics.py`), reading the
original files or the Hub into the paper's splits, k-shot sampling, tokenising and batching (`load.py`)."""
