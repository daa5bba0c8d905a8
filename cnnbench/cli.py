"""Shared by the entry points: a user's mistake ends in one line on stderr and a non-zero exit."""
import sys

from cnnbench.engine.trainer import Interrupted
from cnnbench.errors import CnnbenchError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 143  # as if killed by SIGTERM: schedulers read it as preempted, not failed
EXIT_CTRL_C = 130


def run_reporting_errors(fn, *args):
    try:
        return fn(*args)
    except CnnbenchError as e:
        print(f"cnnbench: error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
    except Interrupted:
        raise SystemExit(EXIT_INTERRUPTED) from None
    except KeyboardInterrupt:
        raise SystemExit(EXIT_CTRL_C) from None
