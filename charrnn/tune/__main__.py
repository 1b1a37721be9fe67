"""`python -m charrnn.tune ARGS_JSON`: one worker process of `charrnn tune` (started by command.py)."""

import sys

from .worker import worker_main

sys.exit(worker_main(sys.argv[1:]))
