"""A run directory belongs to one process at a time, and nothing a user had there is written over:
real commands in subprocesses, real directories."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from .helpers import ROOT, SMOKE, run_cli

pytestmark = pytest.mark.slow  # every case is a real command in a subprocess

TINY = [*SMOKE, "data.train_size=64", "train.epochs=1"]


def snapshot(directory):
    """Every file under directory with its bytes and modification time."""
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in directory.rglob("*") if p.is_file()}


def start(*args, cwd=ROOT) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cnnbench.train", *args],
        cwd=cwd,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"exited before {what}: {process.stderr.read()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    result = run_cli(*TINY, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr
    return run_dir


def test_a_run_records_its_config_as_hydra_would(finished):
    assert sorted(p.name for p in (finished / ".hydra").iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    assert "train.epochs=1" in (finished / ".hydra" / "overrides.yaml").read_text()
    assert "name: lenet5" in (finished / ".hydra" / "config.yaml").read_text()


@pytest.mark.parametrize(
    "args,message",
    [
        ([], "resume: {run_dir} already holds a run (checkpoints/last.pt); pass resume=auto"),
        (["resume=outputs/other.pt"], "resume: {run_dir} already holds a run (checkpoints/last.pt)"),
    ],
)
def test_a_rerun_is_refused_before_it_writes_anything(finished, args, message):
    before = snapshot(finished)
    result = run_cli(*TINY, "optimizer.lr=0.5", *args, f"hydra.run.dir={finished}")
    assert result.returncode == 2
    assert result.stderr.startswith("cnnbench: error: " + message.format(run_dir=finished))
    assert snapshot(finished) == before  # .hydra/ too: the report still reads the old run's overrides


def test_a_finished_run_without_its_checkpoints_is_not_started_over(finished, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("summary.json", "metrics.csv", "train.log"):
        (run_dir / name).write_bytes((finished / name).read_bytes())
    before = snapshot(run_dir)
    result = run_cli(*TINY, "resume=auto", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2
    assert f"{run_dir} already holds a run without checkpoints/last.pt to continue" in result.stderr
    assert snapshot(run_dir) == before and sorted(p.name for p in run_dir.iterdir()) == sorted(
        ["summary.json", "metrics.csv", "train.log"]
    )


def test_a_users_directory_is_refused_and_left_as_it_was(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = run_cli(*TINY, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    assert (
        result.stderr == f"cnnbench: error: hydra.run.dir: {tmp_path} already holds notes.txt; cnnbench "
        f"writes only into a new or empty directory: choose another\n"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_an_empty_run_dir_setting_is_refused(tmp_path):
    """`hydra.run.dir=$UNSET` would be the current directory."""
    (tmp_path / "notes.txt").write_text("mine")
    process = start(*TINY, "hydra.run.dir=", cwd=tmp_path)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2
    assert stderr == (
        "cnnbench: error: hydra.run.dir: empty (an unset shell variable?); name the directory to write to\n"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_evaluate_and_predict_write_their_own_directories(finished, tmp_path):
    before = snapshot(finished)
    checkpoint = finished / "checkpoints" / "best.pt"
    result = run_cli(f"checkpoint={checkpoint}", f"hydra.run.dir={finished}", module="cnnbench.evaluate")
    assert result.returncode == 2 and f"{finished} already holds a run" in result.stderr
    assert snapshot(finished) == before
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "cnnbench.evaluate", f"checkpoint={checkpoint}", "hardware=cpu"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    [written] = (tmp_path / "outputs" / "evaluate").glob("*/*/evaluation.json")  # outputs/evaluate/<date>/<time>
    assert (written.parent / ".hydra" / "overrides.yaml").exists()
    assert snapshot(finished) == before


def test_a_second_process_is_refused_naming_the_holder_and_a_dead_ones_lock_is_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    long_run = [*SMOKE, "train.epochs=1000", "train.checkpoint_every_steps=1", f"hydra.run.dir={run_dir}"]
    first = start(*long_run)
    try:
        wait_for(lambda: (run_dir / "checkpoints" / "last.pt").exists(), first, "the first run's checkpoint")
        assert (run_dir / "run.lock").read_text() == f"{socket.gethostname()} {first.pid}\n"
        second = run_cli(*long_run, "resume=auto", timeout=120)
        assert second.returncode == 2
        assert second.stderr == (
            f"cnnbench: error: hydra.run.dir: {run_dir} is in use by pid {first.pid} on "
            f"{socket.gethostname()} (run.lock); wait for it to end, "
            f"or choose another directory\n"
        )
        first.send_signal(signal.SIGKILL)  # no clean-up: the kernel releases the lock
        first.wait(timeout=60)
        third = start(*long_run, "resume=auto")
        try:
            wait_for(lambda: (run_dir / "run.lock").read_text().endswith(f" {third.pid}\n"), third, "the takeover")
        finally:
            third.kill()
            third.wait(timeout=60)
    finally:
        first.kill()
        first.wait(timeout=60)


def test_a_directory_holding_only_the_runs_own_output_file_is_new(tmp_path):
    """`cnnbench.train hydra.run.dir=run > run/out.log` (or SLURM's --output there): the shell made the file
    for this very run, so the directory counts as new; another file in it still refuses."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with open(run_dir / "out.log", "w") as out:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "cnnbench.train",
                *SMOKE,
                "train.epochs=1",
                "train.limit_train_batches=2",
                "train.limit_val_batches=1",
                f"hydra.run.dir={run_dir}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            timeout=300,
        )
    assert result.returncode == 0, (run_dir / "out.log").read_text()[-2000:]
    assert (run_dir / "summary.json").exists()
