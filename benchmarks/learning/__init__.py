"""Learning benchmarks: tasks, training runs and their statistics (each script also runs by path).

The scripts import their siblings by name (`import task`, `import script_env`), as they do when run by path; imported
as this package (the tests), this folder goes on sys.path so those names resolve the same way."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
