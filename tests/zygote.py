"""A warm interpreter that forks the test suite's commands: `python -m tests.zygote SOCKET`.

Every `python -m cnnbench.<command>` of the tests would spend most of its time importing torch, torchvision
and timm (about 10 s of CPU on a slow core, more than most of those commands run). This process imports
them once, runs no torch operation (no thread pool exists to be broken by fork), and for each request
forks a child that becomes the command: its own stdin, stdout and stderr, working directory, environment
and argv, the entry point run as `python -m` runs it (runpy, `__main__`), and a real exit status or
signal, reported back to the test. What a command does after its start is what a cold one does: Hydra,
logging and the run all start in the child.
"""

import json
import os
import selectors
import signal
import socket
import sys

import hydra  # noqa: F401  (imported here so that no command pays for it)
import timm  # noqa: F401
import torch  # noqa: F401
import torch.utils.tensorboard  # noqa: F401
import torchvision  # noqa: F401

import cnnbench.bench  # noqa: F401
import cnnbench.engine.inference  # noqa: F401
import cnnbench.engine.trainer  # noqa: F401


def serve(path: str):
    """Answers requests until stdin closes (the test process ended); returns in a forked child, with its
    request, to run it."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(f"{path}.binding")
    listener.listen(64)
    os.rename(f"{path}.binding", path)  # the path appears once connections are accepted
    children = {}  # pid -> the connection its status goes to
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(sys.stdin, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select(timeout=0.05):
            if key.fileobj is sys.stdin:
                if not sys.stdin.read(1):
                    for pid in children:
                        os.kill(pid, signal.SIGKILL)
                    return None
                continue
            conn, _ = listener.accept()
            message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                selector.close()
                listener.close()
                conn.close()
                return json.loads(message), fds
            for fd in fds:
                os.close(fd)
            conn.sendall(f"{pid}\n".encode())
            children[pid] = conn
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                conn = children.pop(pid)
                conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
                conn.close()


def become(request: dict, fds: list[int]) -> None:
    for fd, target in zip(fds, (0, 1, 2)):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = [request["module"], *request["args"]]


if __name__ == "__main__":
    served = serve(sys.argv[1])
    if served is None:
        sys.exit(0)
    request, fds = served
    become(request, fds)
    import runpy

    runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
