"""Learning benchmarks: tasks, training runs and their statistics (each script also runs by path)."""
