"""The code interpreter: transcript format, multi-turn loop, TRL rollout_func, and the executor protocol."""
