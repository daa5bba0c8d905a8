"""Files a run leaves (cnnbench.files): whole or not at all, on a disk that really fills up."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cnnbench.engine.recorder import Recorder
from cnnbench.errors import CnnbenchError, WriteError
from cnnbench.files import read_json, write_json
from cnnbench.report import report

from .helpers import ROOT, SMOKE


def fill(disk):
    """Writes until the disk has no room left."""
    with open(disk / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC


@pytest.mark.parametrize("tiny_disk", ["8m"], indirect=True)  # room for two epochs' checkpoints
@pytest.mark.slow  # a real command in a subprocess
def test_a_disk_that_fills_up_while_metrics_are_written_ends_in_one_line_and_failed(tiny_disk):
    """The disk fills between two epochs (the run stopped meanwhile, so that nothing else lands first):
    metrics.csv cannot be written, and the run ends with one line naming it and summary.json saying failed."""
    run = tiny_disk / "run"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cnnbench.train",
            *SMOKE,
            "train.epochs=2",
            "data.device_resident=false",
            f"hydra.run.dir={run}",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while not (run / "checkpoints" / "last.pt").exists():
            assert process.poll() is None, process.stderr.read()
        process.send_signal(signal.SIGSTOP)
        fill(tiny_disk)
        process.send_signal(signal.SIGCONT)
        _, stderr = process.communicate(timeout=300)
    finally:
        process.kill()  # a failed assertion must not leave it holding the disk
    assert process.returncode == 2 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == (
        f"cnnbench: error: {run / 'metrics.csv'}: could not be written (No "
        f"space left on device); the previous metrics.csv, if any, "
        f"is kept whole"
    )
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"
    assert not list(run.rglob(".*.tmp"))


def test_a_corrupt_summary_is_named(tmp_path):
    path = tmp_path / "summary.json"
    assert read_json(path) is None
    write_json(path, {"status": "completed"})
    assert read_json(path) == {"status": "completed"}
    path.write_text('{"status": "compl')
    with pytest.raises(CnnbenchError, match=f"^{path}: unreadable"):
        read_json(path)
    with pytest.raises(CnnbenchError, match=f"^{path}: unreadable"):
        report(tmp_path)  # python -m cnnbench.report: one line, not a JSONDecodeError traceback


def test_events_the_disk_refuses_are_named_once_and_a_failed_run_keeps_its_own_error(tiny_disk, capfd):
    """TensorBoard writes tb/ from a thread of its own: on a full disk the thread ends with the OSError, and
    the run's next write raises it. cnnbench names tb/ in one line, prints no thread traceback, and a run
    already failing (status failed) still finishes with its own error."""
    recorder = Recorder(tiny_disk / "run", [], 0)
    recorder.start({"status": "running", "step": 0})
    fill(tiny_disk)
    with pytest.raises(WriteError, match=r"/run/tb: TensorBoard's events could not be written \(No space left"):
        for step in range(10_000):  # the thread appends each event: it meets the full disk, a later write says so
            recorder.step(step, {"train/loss": 1.0})
            time.sleep(0.001)
    recorder.finish({"status": "failed", "step": step}, None)
    assert "Traceback" not in capfd.readouterr().err
    assert json.loads((tiny_disk / "run" / "summary.json").read_text())["status"] == "failed"
