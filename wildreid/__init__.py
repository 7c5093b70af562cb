"""wildreid: multi-species animal re-identification.

Importing the package first imports `wildreid.threads`, which sets OpenMP's wait policy to PASSIVE (unless
set) before any wildreid module loads torch: every entry point (train.py, evaluate.py, `wildreid`) gets it.
"""
from . import threads  # noqa: F401  (must stay the first import)
