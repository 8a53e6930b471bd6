"""The logic of the example commands (examples/train_gtpo.py, examples/evaluate.py), importable by tests and
benchmarks; the scripts stay thin so that they read as TRL's do."""
