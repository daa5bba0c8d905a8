"""Shared by the entry points: a user's mistake ends in one line on stderr and a non-zero exit."""

import sys

from cnnbench.errors import EXIT_CTRL_C, EXIT_INTERRUPTED, EXIT_USER_ERROR, CnnbenchError, Interrupted, RankFailed
from cnnbench.paths import path_error_message


def run_reporting_errors(fn, *args):
    try:
        return fn(*args)
    except CnnbenchError as e:
        print(f"cnnbench: error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
    except OSError as e:  # a path that cannot be used (too long, read-only, a file in the way): named, not a bug
        if (message := path_error_message(e)) is None:
            raise
        print(f"cnnbench: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
    except RankFailed as e:
        print(f"cnnbench: error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    except Interrupted:
        raise SystemExit(EXIT_INTERRUPTED) from None
    except KeyboardInterrupt:
        raise SystemExit(EXIT_CTRL_C) from None
