"""The SLURM scripts and the hydra/launcher=slurm sweep, on a real SLURM that this module starts itself:
munged, slurmctld and slurmd on localhost as root, one CPU-only node, everything in a temporary directory.
The jobs are submitted together at the start and the tests read what they left behind."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnnbench.engine.checkpoint import load_checkpoint

from .helpers import ROOT, assert_same_weights_and_optimizer, metrics

pytestmark = [pytest.mark.cluster, pytest.mark.slow]  # a one-node SLURM of its own

ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL")
DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue")
SMOKE = ["data=synthetic", "data.image_size=32", "data.train_size=256", "data.val_size=64", "data.batch_size=32",
         "model=lenet5", "augmentation=none", "hardware.device=cpu", "train.epochs=1"]
# Long enough to be stopped mid-run: 2 epochs of 32 steps, a checkpoint every 4.
RUN = ["data=synthetic", "data.image_size=32", "data.train_size=1024", "data.val_size=64", "data.batch_size=32",
       "model=lenet5", "augmentation=none", "hardware.device=cpu", "hardware.precision=fp32",
       "hardware.deterministic=true", "hardware.nproc=1", "train.epochs=2", "train.checkpoint_every_steps=4"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


class Slurm:
    def __init__(self, base: Path, env: dict):
        self.base, self.env = base, env

    def __call__(self, *args: str) -> str:
        return subprocess.run(args, env=self.env, cwd=self.base, capture_output=True, text=True,
                              check=True).stdout.strip()

    def sbatch(self, *args: str) -> str:
        return self("sbatch", "--parsable", *args)

    def state(self, job: str) -> str:
        """PENDING, RUNNING, COMPLETED, FAILED, ..."""
        return self("squeue", "-h", "--states=all", "-j", job, "-o", "%T")

    def output(self, job: str) -> str:
        return (self.base / f"cnnbench-{job}.out").read_text()

    def run_dir(self, job: str) -> Path:
        return self.base / "outputs" / "slurm" / job


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    missing = [d for d in DAEMONS if not shutil.which(d)]
    if missing:
        pytest.skip(f"SLURM is not installed ({', '.join(missing)} missing): `make setup` installs slurm-wlm and munge")
    if os.geteuid() != 0:
        pytest.skip("the test cluster's slurmd runs jobs as root: run the tests as root")
    base = tmp_path_factory.mktemp("slurm")
    for d in ("state", "spool", "log"):
        (base / d).mkdir()
    host = socket.gethostname()
    # Oversubscribed: the scripts ask for whole nodes (--exclusive), and the tests run their jobs at once.
    (base / "slurm.conf").write_text(f"""\
ClusterName=cnnbench
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={base}/munge.socket,cred_expire=10  # a requeued job waits this long (default 120 s)
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool
SlurmctldPidFile={base}/slurmctld.pid
SlurmdPidFile={base}/slurmd.pid
SlurmctldLogFile={base}/log/slurmctld.log
SlurmdLogFile={base}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=600  # job records stay readable for the tests
KillWait=5
SlurmdTimeout=10
InactiveLimit=0
NodeName={host} NodeAddr=127.0.0.1 CPUs=8 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8
""")
    env = {**os.environ, "SLURM_CONF": str(base / "slurm.conf"), "PYTHONPATH": str(ROOT),
           "SBATCH_GPUS_PER_NODE": "0",  # the scripts ask for GPUs; this cluster has none
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # the jobs' python and torchrun
    subprocess.run(["mungekey", "--create", f"--keyfile={base}/munge.key"], check=True)
    daemons = [subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for command in (
        ["munged", "--foreground", "--force", f"--socket={base}/munge.socket", f"--key-file={base}/munge.key",
         f"--log-file={base}/log/munged.log", f"--pid-file={base}/munged.pid", f"--seed-file={base}/munged.seed"],
        ["slurmctld", "-D", "-i"],
        ["slurmd", "-D"])]
    cluster = Slurm(base, env)
    try:
        wait_for(lambda: cluster("sinfo", "-h", "-o", "%T") == "idle", 30, "slurmd's node to be idle")
    except (AssertionError, subprocess.CalledProcessError) as e:
        for daemon in daemons:
            daemon.kill()
        logs = " | ".join(f.read_text().strip().splitlines()[-1] for f in (base / "log").iterdir() if f.stat().st_size)
        pytest.skip(f"SLURM did not start ({e}): {logs}")
    yield cluster
    subprocess.run(["scancel", "--full", "--user=root"], env=env)
    for daemon in reversed(daemons):
        daemon.terminate()
        daemon.wait(timeout=30)


@pytest.fixture(scope="module")
def jobs(slurm, tmp_path_factory):
    """Every job at once, so that they share the wall time; the sweep's submitter waits for its own."""
    script = ROOT / "scripts" / "slurm"
    sweep_dir = tmp_path_factory.mktemp("sweep")
    sweep_log = sweep_dir.with_suffix(".log").open("w+")  # the submitter's output: a file never fills up
    sweep = subprocess.Popen(
        [sys.executable, "-m", "cnnbench.train", "-m", "hydra/launcher=slurm", *SMOKE, "model=lenet5,fmnist_cnn",
         f"hydra.sweep.dir={sweep_dir}", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.timeout_min=10"],
        cwd=slurm.base, env=slurm.env, stdout=sweep_log, stderr=subprocess.STDOUT)
    # A one-point sweep that SLURM warns mid-run (SIGUSR2, as signal_delay_s before its time limit).
    preempted_dir = tmp_path_factory.mktemp("preempted_sweep")
    preempted_log = preempted_dir.with_suffix(".log").open("w+")
    preempted_sweep = subprocess.Popen(
        [sys.executable, "-m", "cnnbench.train", "-m", "hydra/launcher=slurm", *RUN, f"hydra.sweep.dir={preempted_dir}",
         "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10"],
        cwd=slurm.base, env=slurm.env, stdout=preempted_log, stderr=subprocess.STDOUT)
    submitted = {"straight": slurm.sbatch(str(script / "train.sbatch"), *RUN),
                 "preempted": slurm.sbatch(str(script / "train.sbatch"), *RUN),
                 "multinode": slurm.sbatch("--nodes=1", "--ntasks-per-node=2",
                                           str(script / "train_multinode.sbatch"), *SMOKE)}

    # Preemption: SLURM's warning (USR1, to the batch shell as --signal=B:USR1 would) once the run has
    # checkpointed; the script requeues the job, which starts over on the same run directory.
    preempted = submitted["preempted"]
    last = slurm.run_dir(preempted) / "checkpoints" / "last.pt"
    wait_for(last.exists, 120, "the first checkpoint")
    slurm("scancel", "--signal=USR1", "--batch", preempted)

    # Time limits are too coarse for a test (SLURM may send --signal up to 60 s early): the same signal by hand.
    wait_for(lambda: list(preempted_dir.rglob("last.pt")), 180, "the preempted sweep point's first checkpoint")
    [task] = [d.name for d in (preempted_dir / ".submitit").iterdir() if d.is_dir()]  # one job: no array
    slurm("scancel", "--signal=USR2", task)

    for job in submitted.values():
        wait_for(lambda: slurm.state(job) in ENDED, 240, f"job {job} to end")
    sweep.wait(timeout=240)
    preempted_sweep.wait(timeout=300)
    sweep_log.seek(0)
    preempted_log.seek(0)
    return {**submitted, "sweep": (sweep.returncode, sweep_log.read(), sweep_dir),
            "preempted_sweep": (preempted_sweep.returncode, preempted_log.read(), preempted_dir, task)}


def exit_code(slurm, job: str) -> str:
    return slurm("scontrol", "show", "job", job).split("ExitCode=")[1].split()[0]


def test_train_sbatch_runs_to_completion(slurm, jobs):
    job = jobs["straight"]
    assert exit_code(slurm, job) == "0:0", slurm.output(job)
    run_dir = slurm.run_dir(job)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert [row["epoch"] for row in metrics(run_dir)] == ["0", "1"]
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 64


def test_multinode_sbatch_meets_two_ranks_by_rendezvous(slurm, jobs):
    """2 tasks on the one node: 2 torchruns of one rank each, meeting on the first node."""
    job = jobs["multinode"]
    assert exit_code(slurm, job) == "0:0", slurm.output(job)
    state = load_checkpoint(slurm.run_dir(job) / "checkpoints" / "last.pt")
    assert state["world_size"] == 2 and state["step"] == 256 // 32
    assert json.loads((slurm.run_dir(job) / "summary.json").read_text())["status"] == "completed"


def test_preempted_job_requeues_itself_and_ends_bit_identical(slurm, jobs):
    job = jobs["preempted"]
    output = slurm.output(job)
    assert "interrupted (SIGUSR1)" in output and "Restarts=1" in slurm("scontrol", "show", "job", job), output
    assert exit_code(slurm, job) == "0:0", output
    a, b = (load_checkpoint(slurm.run_dir(jobs[k]) / "checkpoints" / "last.pt") for k in ("straight", "preempted"))
    assert a["step"] == b["step"] == 64
    assert_same_weights_and_optimizer(a, b)
    timing = ("epoch_time_s", "train_img_per_s")
    assert ([{k: v for k, v in row.items() if k not in timing} for row in metrics(slurm.run_dir(jobs["straight"]))]
            == [{k: v for k, v in row.items() if k not in timing} for row in metrics(slurm.run_dir(job))])


def test_sweep_on_slurm_runs_one_job_per_point(slurm, jobs):
    returncode, output, sweep_dir = jobs["sweep"]
    assert returncode == 0, output
    summaries = [json.loads(f.read_text()) for f in sweep_dir.glob("*/summary.json")]  # a dir per point
    assert sorted((s["model"], s["status"]) for s in summaries) == [("fmnist_cnn", "completed"),
                                                                   ("lenet5", "completed")]
    tasks = sorted(d.name for d in (sweep_dir / ".submitit").iterdir() if d.is_dir() and "_" in d.name)
    assert len(tasks) == 2 and all(slurm.state(task) == "COMPLETED" for task in tasks)  # a job array


def test_a_sweep_point_warned_by_slurm_is_requeued_and_finishes(slurm, jobs):
    """hydra/launcher=slurm: submitit catches SLURM's SIGUSR2 and requeues the job; the requeued job
    continues its point from checkpoints/last.pt (resume=auto) and the sweep ends completed."""
    returncode, output, sweep_dir, task = jobs["preempted_sweep"]
    assert returncode == 0, output
    [point] = [p.parent for p in sweep_dir.rglob("summary.json")]
    summary = json.loads((point / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == 64, output
    assert "Restarts=1" in slurm("scontrol", "show", "job", task)
    assert "resumed from" in (point / "train.log").read_text()
