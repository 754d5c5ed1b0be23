"""`python -m minidept.bench`: the efficiency benchmark; the code is in `minidept/tools/bench/`."""
