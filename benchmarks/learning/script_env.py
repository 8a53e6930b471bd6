"""What a learning script needs before its first import of trl_gtpo, TRL or Hugging Face: import it first.

Run by path (`python benchmarks/learning/run.py`), a script would otherwise find the trl_gtpo installed in the
environment (an editable install may point at another checkout) and reach for the Hub; the defaults keep a run
offline and quiet, and an environment variable set by the caller still wins.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

for name, value in (
    ("TRL_EXPERIMENTAL_SILENCE", "1"),
    ("TOKENIZERS_PARALLELISM", "false"),
    ("HF_HUB_OFFLINE", "1"),
    ("HF_DATASETS_OFFLINE", "1"),
):
    os.environ.setdefault(name, value)
sys.path.insert(0, ROOT)  # this checkout's trl_gtpo, before any installed one
