"""The process of one sweep run: ``visattn.training.train(make_config(...))``, the code path of tools/train.py.

Runs are children of a multiprocessing *forkserver* that has imported torch, Lightning and visattn once, so
a run starts in a fraction of a second instead of re-importing for several seconds, and is still a process
of its own: a crash or kill stays in it. A failed run prints one ``visattn-sweep-error:`` line (read back
into results.csv) after its traceback and exits non-zero.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import select
import signal
import sys
import threading
import time
import traceback
from multiprocessing.context import BaseContext
from typing import Any

ERROR_MARK = "visattn-sweep-error: "
PRELOAD = ["torch", "lightning", "visattn.training", "visattn.tasks.classify", "visattn.data"]


@functools.lru_cache(maxsize=1)
def context() -> BaseContext:
    """The forkserver context (spawn where there is none); its server starts with the first run."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        return ctx
    return multiprocessing.get_context("spawn")


def die_with(pid: int) -> None:
    """SIGKILL this process as soon as process ``pid`` (the sweep, or the Ray worker, that launched it) exits.

    The forkserver in between outlives its clients while any run is alive, so a parent-death signal would not
    fire: a watchdog thread waits on a pidfd of the launcher instead (polling once a second where there is none).
    """

    def watch() -> None:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:  # already gone
            pass
        except (AttributeError, OSError):  # no pidfd here: poll
            while True:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                except PermissionError:
                    pass
                time.sleep(1.0)
        else:
            select.select([fd], [], [])
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="sweep-watchdog", daemon=True).start()


def child_main(values: dict[str, Any], log_path: str, threads: int, launcher: int,
               peaks: list[dict[str, Any]] | None = None) -> None:
    """Body of a run process: output to ``log_path``, ``threads`` torch threads, the sweep's matmul ``peaks``
    (measured before any run started; visattn.perf.use_peaks), then train."""
    die_with(launcher)
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)  # data loader workers too
    import torch

    torch.set_num_threads(threads)
    from visattn.config import make_config
    from visattn.errors import error_text
    from visattn.perf import use_peaks
    from visattn.training import train

    use_peaks(peaks)
    code = 0
    try:
        train(make_config({}, values, source="sweep run"))
    except BaseException as err:
        traceback.print_exc()
        print(f"\n{ERROR_MARK}{type(err).__name__}: {error_text(err)}", file=sys.stderr)
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    sys.exit(code)
