"""Screenshots of TensorBoard's Time Series, Scalars and HParams pages for a run or a sweep, to see them as a
person does in a browser (for people; the tests read the event files with TensorBoard's own readers):

    python scripts/tensorboard_screenshots.py outputs/example                  # -> outputs/example/screenshots/
    python scripts/tensorboard_screenshots.py outputs/example --out shots --port 6010 --size 1920x1400

Starts `tensorboard --logdir DIR` with this Python's TensorBoard, waits until it has read the runs, takes one
headless Chromium screenshot per page (timeseries.png, scalars.png, hparams.png), then stops TensorBoard.
Needs `chromium` on PATH (Debian and Ubuntu: `apt-get install chromium`).
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

PAGES = ["timeseries", "scalars", "hparams"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def wait_for_runs(url: str, tensorboard: subprocess.Popen, log, timeout: float) -> list[str]:
    """The runs TensorBoard lists, once it lists any: before that every page would be empty."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tensorboard.poll() is not None:
            log.seek(0)
            sys.exit(f"tensorboard exited with status {tensorboard.returncode}:\n{log.read()}")
        try:
            with urllib.request.urlopen(f"{url}/data/runs", timeout=5) as response:
                runs = json.load(response)
            if runs:
                return runs
        except OSError:
            pass  # not listening yet
        time.sleep(1)
    sys.exit(f"tensorboard found no runs under its log directory within {timeout:.0f}s")


def screenshot(chromium: str, url: str, path: Path, size: str, wait_ms: int) -> None:
    # The virtual-time budget lets the page's scripts fetch and draw the charts before the picture is taken.
    with tempfile.TemporaryDirectory() as profile:
        command = [
            chromium,
            "--headless",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={size.replace('x', ',')}",
            f"--virtual-time-budget={wait_ms}",
            f"--screenshot={path}",
            url,
        ]
        if os.geteuid() == 0:
            command.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0 or not path.exists():
        sys.exit(f"chromium could not take {path}:\n{result.stderr}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logdir", type=Path, help="a run directory or a sweep directory (TensorBoard's --logdir)")
    parser.add_argument("--out", type=Path, help="where the PNGs go (default: LOGDIR/screenshots)")
    parser.add_argument("--port", type=int, help="TensorBoard's port (default: a free one)")
    parser.add_argument("--size", default="1600x1200", help="the browser window, WIDTHxHEIGHT (default 1600x1200)")
    parser.add_argument("--wait-ms", type=int, default=15000, help="virtual time each page gets to render")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium is not on PATH (Debian and Ubuntu: apt-get install chromium)")
    if not args.logdir.is_dir():
        sys.exit(f"{args.logdir} is not a directory")
    out = args.out or args.logdir / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    port = args.port or free_port()
    url = f"http://localhost:{port}"
    log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a pipe nobody reads would stall TensorBoard
    tensorboard = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(args.logdir),
            "--host",
            "localhost",
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=log,
    )
    try:
        runs = wait_for_runs(url, tensorboard, log, timeout=120)
        print(f"tensorboard on {url}: {len(runs)} runs")
        for page in PAGES:
            path = out / f"{page}.png"
            screenshot(chromium, f"{url}/#{page}", path, args.size, args.wait_ms)
            print(path)
    finally:
        tensorboard.terminate()
        tensorboard.wait(timeout=30)
        log.close()


if __name__ == "__main__":
    main()
