"""Shared by the entry points: a user's mistake ends in one line on stderr and a non-zero exit."""

import difflib
import functools
import logging
import os
import re
import sys

import hydra
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from cnnbench.config import CONFIG_PATH
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
    except (MemoryError, RuntimeError) as e:  # torch's OutOfMemoryError and CPU allocator errors are RuntimeErrors
        if (message := memory_error_message(e)) is None:
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


def memory_error_message(e: BaseException) -> str | None:
    """Out of the host's or a GPU's memory: a size the user chose is too big, which a traceback would hide."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if not (isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or "can't allocate memory" in text):
        return None
    asked = re.search(r"[Tt]ried to allocate ([\d.]+)( [KMGT]iB| bytes)?", text)
    if asked and asked.group(2) in (None, " bytes"):
        size = f"{float(asked.group(1)) / 2**30:.1f} GiB"
    else:
        size = asked and f"{asked.group(1)}{asked.group(2)}"
    where = "a GPU" if type(e).__name__ == "OutOfMemoryError" else "the host"
    return (
        f"out of memory on {where}"
        + (f" (it asked for {size} more)" if size else "")
        + ": a smaller data.batch_size, data.image_size, data.train_size (synthetic data) or model "
        "(model.width_mult, model.depth_mult)"
    )


def hydra_app(config_name: str):
    """hydra.main for one of conf/'s primary configs, with Hydra's own errors (a mistyped key or option, a
    value of the wrong type, an override it cannot parse) reported as the project's are: one line, exit 2."""

    def decorate(task):
        @functools.wraps(task)
        def task_in_users_env(cfg):  # the task and its processes see HYDRA_FULL_ERROR as the user set it
            users_env(asked)
            try:
                return task(cfg)
            finally:
                os.environ["HYDRA_FULL_ERROR"] = "1"

        app = hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=config_name)(task_in_users_env)
        asked = None

        @functools.wraps(task)
        def main():
            nonlocal asked
            asked = os.environ.get("HYDRA_FULL_ERROR")
            os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises its errors instead of printing and exiting 1
            try:
                return app()
            except (HydraException, OmegaConfBaseException) as e:
                if asked == "1":
                    raise
                print(f"cnnbench: error: {hydra_error_message(e)}", file=sys.stderr)
                raise SystemExit(EXIT_USER_ERROR) from None
            except KeyboardInterrupt:  # Ctrl-C while torch imports, before the run's own handler is set
                logging.getLogger("torch").setLevel(logging.WARNING)  # half imported, its exit hooks log at INFO
                print("cnnbench: interrupted (Ctrl-C) before the run started", file=sys.stderr)
                raise SystemExit(EXIT_CTRL_C) from None
            finally:
                users_env(asked)

        return main

    return decorate


def users_env(value: str | None) -> None:
    if value is None:
        os.environ.pop("HYDRA_FULL_ERROR", None)
    else:
        os.environ["HYDRA_FULL_ERROR"] = value


def hydra_error_message(e: Exception) -> str:
    """One line for a Hydra or OmegaConf error: the key or option at fault, what is wrong, the nearest names."""
    if isinstance(e, MissingConfigException) and e.missing_cfg_file and e.options:
        group, _, option = e.missing_cfg_file.rpartition("/")
        near = difflib.get_close_matches(option, e.options, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(near)}? " if near else ""
        return f"{group}={option}: not an option of {group}; {hint}--help lists them"
    if isinstance(e, OverrideParseException):
        return f"{e.override}: not an override Hydra can parse ({str(e).splitlines()[0]})"
    cause = e.__cause__ if isinstance(e.__cause__, OmegaConfBaseException) else e
    what = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    key = getattr(cause, "full_key", None)
    if key and isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        return f"{key}: not a key of the config; " + nearest_key(key, cause.parent_node)
    if key and "is not a ListConfig" in what:
        return f"{key}: a list, written in brackets: {key}=[a,b]"
    return f"{key}: {what}" if key else what


def nearest_key(key: str, node) -> str:
    """The config's key a mistyped one most likely meant: one that ends in the same name, else the closest."""
    if node is None:
        return "--cfg job shows the keys"
    keys = list(flat_keys(OmegaConf.to_container(node._get_root(), resolve=False)))
    name = key.rpartition(".")[2]
    near = [k for k in keys if k.rpartition(".")[2] == name] or difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    return f"did you mean {near[0]}?" if near else "--cfg job shows the keys"


def flat_keys(tree: dict, prefix: str = ""):
    for name, value in tree.items():
        if isinstance(value, dict) and value:
            yield from flat_keys(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"
