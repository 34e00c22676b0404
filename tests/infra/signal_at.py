"""train.py sent a real stop signal as step STEP is logged: a scheduler's SIGTERM at a known step.

    python tests/infra/signal_at.py STEP {self,launcher} [train.py flags]
    torchrun ... tests/infra/signal_at.py STEP launcher [train.py flags]

``self``: the process signals itself. ``launcher``: rank 0 signals its parent, torchrun, which
forwards the signal to every rank, and waits until the signal has reached it, so the ranks stop
after step STEP whichever order it reaches them in.
"""
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import train  # noqa: E402
from e2h.infra import distributed as dist  # noqa: E402
from e2h.infra import preemption  # noqa: E402
from e2h.infra.errors import guard  # noqa: E402
from e2h.run import Run  # noqa: E402

STEP, TARGET = int(sys.argv[1]), sys.argv[2]
logged = Run.log


def log_then_signal(self, record):
    logged(self, record)
    if record.get("step") == STEP and "loss" in record and dist.is_main():
        os.kill(os.getpid() if TARGET == "self" else os.getppid(), signal.SIGTERM)
        t0 = time.time()
        while preemption.requested() is None and time.time() - t0 < 60:
            time.sleep(0.01)


Run.log = log_then_signal
code = guard(train.main, sys.argv[3:])
dist.shutdown(clean=code == 0)
sys.exit(code)
