"""The efficiency benchmark of minidept: `python -m minidept.bench --help` (docs/benchmarks.md)."""
