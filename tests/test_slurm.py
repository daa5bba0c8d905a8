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

from .helpers import ROOT, assert_same_weights_and_optimizer, metrics, reproducible_metrics

pytestmark = [pytest.mark.cluster, pytest.mark.slow]  # a one-node SLURM of its own

ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL")
DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue")
SMOKE = [
    "data=synthetic",
    "data.image_size=32",
    "data.train_size=256",
    "data.val_size=64",
    "data.batch_size=32",
    "model=lenet5",
    "augmentation=none",
    "hardware.device=cpu",
    "train.epochs=1",
]
# Long enough to be stopped mid-run: 2 epochs of 32 steps, a checkpoint every 4.
RUN = [
    "data=synthetic",
    "data.image_size=32",
    "data.train_size=1024",
    "data.val_size=64",
    "data.batch_size=32",
    "model=lenet5",
    "augmentation=none",
    "hardware.device=cpu",
    "hardware.precision=fp32",
    "hardware.deterministic=true",
    "hardware.nproc=1",
    "train.epochs=2",
    "train.checkpoint_every_steps=4",
]
TIME_LIMITED_EPOCHS = 100


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
        return subprocess.run(
            args, env=self.env, cwd=self.base, capture_output=True, text=True, check=True
        ).stdout.strip()

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
SchedulerParameters=bf_interval=1  # a requeued job starts once eligible, not at the next 30 s backfill pass
KillWait=5
SlurmdTimeout=300  # slurmd answers late on a loaded machine: no node marked DOWN, no job requeued for it
InactiveLimit=0
SlurmctldDebug=debug  # the log names each time-limit warning sent (send_job_warn_signal)
NodeName={host} NodeAddr=127.0.0.1 CPUs=8 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8
""")
    env = {
        **os.environ,
        "SLURM_CONF": str(base / "slurm.conf"),
        "PYTHONPATH": str(ROOT),
        "SBATCH_GPUS_PER_NODE": "0",  # the scripts ask for GPUs; this cluster has none
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }  # the jobs' python and torchrun
    subprocess.run(["mungekey", "--create", f"--keyfile={base}/munge.key"], check=True)
    daemons = [
        subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for command in (
            [
                "munged",
                "--foreground",
                "--force",
                f"--socket={base}/munge.socket",
                f"--key-file={base}/munge.key",
                f"--log-file={base}/log/munged.log",
                f"--pid-file={base}/munged.pid",
                f"--seed-file={base}/munged.seed",
            ],
            ["slurmctld", "-D", "-i"],
            ["slurmd", "-D"],
        )
    ]
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
    """Every job at once, so that they share the wall time; the sweeps' submitters wait for their own."""

    def start_sweep(name: str, *overrides: str):
        sweep_dir = tmp_path_factory.mktemp(name)
        log = sweep_dir.with_suffix(".log").open("w+")  # the submitter's output: a file never fills up
        submitter = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cnnbench.train",
                "-m",
                "hydra/launcher=slurm",
                *overrides,
                f"hydra.sweep.dir={sweep_dir}",
                "hydra.launcher.cpus_per_task=1",
            ],
            cwd=slurm.base,
            env=slurm.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return submitter, log, sweep_dir

    def ended_sweep(submitter, log, sweep_dir, timeout: float):
        submitter.wait(timeout=timeout)
        log.seek(0)
        return submitter.returncode, log.read(), sweep_dir

    def only_job(sweep_dir: Path) -> str:
        [job] = [d.name for d in (sweep_dir / ".submitit").iterdir() if d.is_dir()]  # one point: no array
        return job

    # First, as it runs longest: SLURM's own time limit, cut short mid-run. slurmctld checks limits every
    # 30 to 60 s and warns (USR2, send_job_warn_signal in its log) at the first check within signal_delay_s
    # (submitit's 120) + 30 s of the limit. Once the point has checkpointed, its limit becomes its run time
    # plus 2 minutes: the next check warns it, before any kill, while it trains (100 epochs: a minute of steps
    # on an idle CPU). Its requeued job gets its 10 minutes back, so that it is not warned while it starts.
    time_limited_sweep = start_sweep(
        "time_limited_sweep", *RUN, f"train.epochs={TIME_LIMITED_EPOCHS}", "hydra.launcher.timeout_min=10"
    )
    sweep = start_sweep("sweep", *SMOKE, "model=lenet5,fmnist_cnn", "hydra.launcher.timeout_min=10")
    # Preemption, which SLURM signals as it does a time limit (USR2), by hand: at a known moment, once the
    # point has checkpointed, so that exactly one requeue is checked.
    preempted_sweep = start_sweep("preempted_sweep", *RUN, "hydra.launcher.timeout_min=10")
    script = ROOT / "scripts" / "slurm"
    submitted = {
        "straight": slurm.sbatch(str(script / "train.sbatch"), *RUN),
        "preempted": slurm.sbatch(str(script / "train.sbatch"), *RUN),
        "multinode": slurm.sbatch("--nodes=1", "--ntasks-per-node=2", str(script / "train_multinode.sbatch"), *SMOKE),
    }

    # Preemption: SLURM's warning (USR1, to the batch shell as --signal=B:USR1 would) once the run has
    # checkpointed; the script requeues the job, which starts over on the same run directory.
    preempted = submitted["preempted"]
    last = slurm.run_dir(preempted) / "checkpoints" / "last.pt"
    wait_for(last.exists, 120, "the first checkpoint")
    slurm("scancel", "--signal=USR1", "--batch", preempted)

    preempted_dir = preempted_sweep[2]
    wait_for(lambda: list(preempted_dir.rglob("last.pt")), 180, "the preempted sweep point's first checkpoint")
    slurm("scancel", "--signal=USR2", only_job(preempted_dir))

    time_limited_dir = time_limited_sweep[2]
    wait_for(lambda: list(time_limited_dir.rglob("last.pt")), 180, "the time-limited point's first checkpoint")
    time_limited = only_job(time_limited_dir)
    hours, minutes, _ = map(int, job_field(slurm, time_limited, "RunTime").split("-")[-1].split(":"))
    slurm("scontrol", "update", f"JobId={time_limited}", f"TimeLimit={60 * hours + minutes + 2}")
    wait_for(lambda: job_field(slurm, time_limited, "Restarts") != "0", 180, "SLURM to warn and requeue the point")
    slurm("scontrol", "update", f"JobId={time_limited}", "TimeLimit=10")

    for job in submitted.values():
        wait_for(lambda: slurm.state(job) in ENDED, 240, f"job {job} to end")
    return {
        **submitted,
        "sweep": ended_sweep(*sweep, timeout=240),
        "preempted_sweep": (*ended_sweep(*preempted_sweep, timeout=300), only_job(preempted_dir)),
        "time_limited_sweep": (*ended_sweep(*time_limited_sweep, timeout=600), time_limited),
    }


def job_field(slurm, job: str, field: str) -> str:
    """One field of `scontrol show job` (RunTime, Restarts, ...)."""
    return slurm("scontrol", "show", "job", job).split(f"{field}=")[1].split()[0]


def exit_code(slurm, job: str) -> str:
    return slurm("scontrol", "show", "job", job).split("ExitCode=")[1].split()[0]


def test_train_sbatch_runs_to_completion(slurm, jobs):
    job = jobs["straight"]
    assert exit_code(slurm, job) == "0:0", slurm.output(job)
    run_dir = slurm.run_dir(job)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert [row["epoch"] for row in metrics(run_dir)] == ["0", "1"]
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 64


def first_errors(output: str) -> str:
    """Where each torchrun's trouble began, and the end: a failing agent's first lines are what tell why."""
    lines = output.splitlines()
    starts = [i for i, line in enumerate(lines) if "Traceback" in line or "error" in line.lower()][:4]
    return "\n".join("\n".join(lines[i : i + 12]) for i in starts) + "\n...\n" + output[-2000:]


def test_multinode_sbatch_meets_two_ranks_by_rendezvous(slurm, jobs):
    """2 tasks on the one node: 2 torchruns of one rank each, meeting on the first node."""
    job = jobs["multinode"]
    assert exit_code(slurm, job) == "0:0", slurm("scontrol", "show", "job", job) + first_errors(slurm.output(job))
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
    assert reproducible_metrics(slurm.run_dir(jobs["straight"])) == reproducible_metrics(slurm.run_dir(job))


def test_sweep_on_slurm_runs_one_job_per_point(slurm, jobs):
    returncode, output, sweep_dir = jobs["sweep"]
    assert returncode == 0, output
    summaries = [json.loads(f.read_text()) for f in sweep_dir.glob("*/summary.json")]  # a dir per point
    assert sorted((s["model"], s["status"]) for s in summaries) == [
        ("fmnist_cnn", "completed"),
        ("lenet5", "completed"),
    ]
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


def test_a_sweep_point_that_reaches_its_time_limit_is_requeued_and_finishes(slurm, jobs):
    """The same, warned by SLURM itself before the job's time limit, cut short mid-run: the requeued job
    continues the point from its last.pt and the sweep ends completed."""
    returncode, output, sweep_dir, task = jobs["time_limited_sweep"]
    assert returncode == 0, output
    [point] = [p.parent for p in sweep_dir.rglob("summary.json")]
    summary = json.loads((point / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == TIME_LIMITED_EPOCHS * 32, output
    restarts = int(job_field(slurm, task, "Restarts"))
    train_log = (point / "train.log").read_text()
    assert restarts >= 1 and "interrupted (SIGUSR2)" in train_log, train_log
    assert f"resumed from {point / 'checkpoints' / 'last.pt'}" in train_log, train_log
