"""hydra/launcher=slurm for cnnbench (conf/hydra/launcher/slurm.yaml). Hydra takes launchers only from the
hydra_plugins namespace package, hence this one small module outside cnnbench/."""

import logging

import submitit
from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from submitit.core.utils import UncompletedJobError

log = logging.getLogger("cnnbench")


class PreemptibleSlurmLauncher(SlurmLauncher):
    """hydra/launcher=slurm (conf/hydra/launcher/slurm.yaml): Hydra's submitit launcher, whose jobs
    submitit requeues, up to max_num_timeout times, when SLURM warns them (SIGUSR2, signal_delay_s
    before the time limit, or at a preemption): the trainer writes last.pt at the next step boundary and
    hands the signal on to submitit, which requeues the job (the launcher is checkpointable: it resubmits
    itself), and the requeued job continues its point with resume=auto. A job that ends without a result
    (out of requeues, cancelled, its node lost) is one point that did not complete, for SweepReport to
    name, rather than an UncompletedJobError that ends the sweep and its report."""

    def launch(self, job_overrides, initial_job_idx):
        auto_executor = submitit.AutoExecutor
        submitit.AutoExecutor = UncompletedTolerantExecutor  # the one the parent's launch builds
        try:
            return super().launch(job_overrides, initial_job_idx)
        finally:
            submitit.AutoExecutor = auto_executor


class UncompletedTolerantExecutor(submitit.AutoExecutor):
    def map_array(self, fn, *iterable):
        return [UncompletedTolerantJob(job) for job in super().map_array(fn, *iterable)]


class UncompletedTolerantJob:
    def __init__(self, job):
        self.job = job

    def results(self) -> list[JobReturn]:
        try:
            return self.job.results()
        except UncompletedJobError as e:
            log.warning(
                f"SLURM job {self.job.job_id} ended without completing its point: {str(e).strip().splitlines()[0]}"
            )
            ended = JobReturn(status=JobStatus.COMPLETED)  # the point's own record says how it ended
            ended.return_value = None
            return [ended]
