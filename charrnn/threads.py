"""How many threads the BLAS behind numpy's matrix products may use (`train.threads`, `--threads`).

OpenBLAS and MKL start as many threads as the machine has cores. On a shared
machine, or beside another run, that oversubscribes the cores and every product
waits on the others; one thread per run is then faster. The count is fixed the
standard way, by the BLAS environment variables, which only act before numpy is
imported: the CLI loads numpy lazily and calls set_threads first. Once numpy is
loaded (a library user, or a second call), the count is changed at run time
through threadpoolctl when it is installed (the optional extra `threads`).
"""

from __future__ import annotations

import os
import sys

from .errors import CharRNNError

THREADS_EXTRA = 'pip install -e ".[threads]"'
ENV_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
            "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")  # fmt: skip

_applied: int | None = None  # the count this process set, if any
_limiter = None  # threadpoolctl's limiter, kept alive so that its limit stays


def set_threads(n: int) -> str:
    """Limit the BLAS to n threads (n >= 1); returns how: "env", "threadpoolctl" or "unchanged"."""
    global _applied, _limiter
    if n < 1:
        raise CharRNNError(f"the number of threads must be >= 1, got {n}")
    if _applied == n:
        return "unchanged"
    if "numpy" not in sys.modules:
        for var in ENV_VARS:
            os.environ[var] = str(n)
        _applied = n
        return "env"
    if all(os.environ.get(var) == str(n) for var in ENV_VARS[:3]):  # set before Python started: in force
        _applied = n
        return "env"
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        raise CharRNNError(
            f"cannot set {n} threads: numpy is already loaded, so its BLAS no longer reads "
            f"OPENBLAS_NUM_THREADS; install threadpoolctl ({THREADS_EXTRA}) or set that variable before starting"
        ) from None
    _limiter = threadpool_limits(limits=n, user_api="blas")
    _applied = n
    return "threadpoolctl"
