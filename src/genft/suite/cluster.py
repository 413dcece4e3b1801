"""Executors for clusters a user already runs: Ray and Slurm (through submitit), implementations of
`units.Executor` like the local one.  Each runs a round's units (`units.Unit`) with the suite's resources and
retries, in dependency order (a fine-tuned checkpoint's evaluation after its fine-tune, base models' at
once), each unit on a worker that calls `units.run_unit`; the results are the store's atomic files on a
shared filesystem, so the driver only orders work and reports failures.  Ray and submitit are optional
extras, imported by name when a suite asks for them (`require`).
"""
from __future__ import annotations

import contextlib
import importlib
import signal
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

from .planning import Plan
from .schema import ExecutorSection, Resources, SuiteError
from .spec import Suite
from .execute import Trainer
from .units import Executor, LocalExecutor, Unit, run_unit

Log = Callable[[str], None]
UnitFn = Callable[..., str]


def require(module: str, extra: str):
    """Import an optional cluster library, or say what to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise SuiteError(f"executor {extra}: {module} is not installed; run `pip install 'genft[{extra}]'` "
                         "(or choose executor.kind: local)") from None


class ClusterExecutor(Executor):
    """Runs units elsewhere (`run_units`); returns the ids of the units that failed for good (after retries)."""

    here = False

    def __init__(self, section: ExecutorSection, unit_fn: UnitFn = run_unit):
        self.section = section
        self.unit_fn = unit_fn

    def resources(self, unit: Unit) -> Resources:
        return self.section.finetune if unit.kind == "finetune" else self.section.evaluate

    def run(self, suite: Suite, p: Plan, units: Sequence[Unit], log: Log) -> list[str]:
        return self.run_units(suite.path, units, suite.output, log)

    def run_units(self, suite_path: Path, units: Sequence[Unit], output: Path, log: Log) -> list[str]:
        raise NotImplementedError  # pragma: no cover - each cluster's own


class RayExecutor(ClusterExecutor):
    """Each unit a Ray task with its resources and `retries` (a killed worker or a raised error is retried);
    an evaluation waits for its fine-tune's task by taking its result as an argument."""

    def __init__(self, section: ExecutorSection, unit_fn: UnitFn = run_unit, num_cpus: int | None = None):
        super().__init__(section, unit_fn)
        self.num_cpus = num_cpus  # a local cluster's size (default: Ray's, the machine's cores)

    def run_units(self, suite_path: Path, units: Sequence[Unit], output: Path, log: Log) -> list[str]:
        ray = require("ray", "ray")
        started = not ray.is_initialized()
        if started:
            ray.init(address=self.section.address, num_cpus=None if self.section.address else self.num_cpus,
                     include_dashboard=False, log_to_driver=True)
        log(f"ray: {'connected to ' + self.section.address if self.section.address else 'a local cluster'}, "
            f"{len(units)} units")
        task = ray.remote(self.unit_fn)
        refs = {}
        try:
            for u in units:
                r = self.resources(u)
                opts = {"num_cpus": r.cpus, "num_gpus": r.gpus, "max_retries": self.section.retries,
                        "retry_exceptions": True, "name": u.id}
                if r.memory_gb:
                    opts["memory"] = int(r.memory_gb * 2**30)
                deps = [refs[u.waits_for]] if u.waits_for in refs else []
                refs[u.id] = task.options(**opts).remote(str(suite_path), u, *deps)
            failed = []
            for uid, ref in refs.items():
                try:
                    log(f"ray: {ray.get(ref)}")
                except Exception as e:  # noqa: BLE001  (a task's error, after its retries, is reported)
                    log(f"ray: {uid} FAILED: {str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}")
                    failed.append(uid)
            return failed
        finally:
            if started:
                ray.shutdown()


class SlurmExecutor(ClusterExecutor):
    """Units as Slurm jobs through submitit: the units that can start at once as one job array per kind, an
    evaluation submitted when its fine-tune's job has finished, a failed job submitted again up to `retries`
    times; each job's log path is printed.  `cluster: local` runs the same jobs as processes on this machine."""

    def _executor(self, folder: Path, kind_resources: Resources, name: str):
        submitit = require("submitit", "slurm")
        ex = submitit.AutoExecutor(folder=str(folder), cluster=self.section.cluster)
        params = {"timeout_min": kind_resources.time_min, "cpus_per_task": kind_resources.cpus, "name": name}
        if kind_resources.gpus:
            params["gpus_per_node"] = kind_resources.gpus
        if kind_resources.memory_gb:
            params["mem_gb"] = kind_resources.memory_gb
        if self.section.partition:
            params["slurm_partition"] = self.section.partition
        if self.section.account:
            params["slurm_account"] = self.section.account
        ex.update_parameters(**params)
        return ex

    def run_units(self, suite_path: Path, units: Sequence[Unit], output: Path, log: Log) -> list[str]:
        folder = Path(self.section.log_dir) if self.section.log_dir else output / "slurm"
        execs = {k: self._executor(folder, self.section.finetune if k == "finetune" else self.section.evaluate,
                                   f"genft-{k}") for k in ("finetune", "evaluate")}
        waiting = [u for u in units if u.waits_for in {x.id for x in units}]
        attempts: dict[str, int] = {}
        running: dict[str, tuple[Unit, object]] = {}

        def submit(batch: list[Unit]) -> None:
            for kind in ("finetune", "evaluate"):
                todo = [u for u in batch if u.kind == kind]
                if not todo:
                    continue
                with execs[kind].batch():  # one job array per kind where several start together
                    jobs = [execs[kind].submit(self.unit_fn, str(suite_path), u) for u in todo]
                for u, job in zip(todo, jobs):
                    attempts[u.id] = attempts.get(u.id, 0) + 1
                    running[u.id] = (u, job)
                    log(f"slurm: {u.id} job {job.job_id} (attempt {attempts[u.id]}), log {job.paths.stdout}")

        with _sigterm_raises():
            try:
                return self._follow(units, waiting, running, attempts, submit, log)
            except BaseException:  # the driver is interrupted (Ctrl-C, SIGTERM): its jobs must not run on
                jobs = [job for _, job in running.values()]  # (not asked whether each is done: that can fail too)
                if jobs:
                    log(f"slurm: interrupted: cancelling {len(jobs)} submitted jobs "
                        f"({', '.join(str(j.job_id) for j in jobs)})")
                for job in jobs:
                    try:
                        job.cancel(check=False)
                    except Exception as e:  # noqa: BLE001  (best effort: report, cancel the others)
                        log(f"slurm: could not cancel job {job.job_id} ({e}); cancel it yourself (scancel)")
                raise

    def _follow(self, units, waiting, running, attempts, submit, log) -> list[str]:
        """Submit what can start, then follow the jobs: resubmit failures, submit what waited for them."""
        submit([u for u in units if u not in waiting])
        failed: list[str] = []
        while running:
            time.sleep(self.section.poll_s if any(not j.done() for _, j in running.values()) else 0)
            for uid, (u, job) in list(running.items()):
                if not job.done():
                    continue
                del running[uid]
                try:
                    log(f"slurm: {job.result()}")
                except Exception as e:  # noqa: BLE001  (the job's error: retried, then reported)
                    why = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                    if attempts[uid] <= self.section.retries:
                        log(f"slurm: {uid} failed ({why}); submitting it again")
                        submit([u])
                        continue
                    log(f"slurm: {uid} FAILED after {attempts[uid]} attempts: {why}; log {job.paths.stderr}")
                    failed.append(uid)
                    skipped = [w for w in waiting if w.waits_for == uid]
                    for w in skipped:
                        log(f"slurm: {w.id} skipped: its fine-tune failed")
                        failed.append(w.id)
                    waiting = [w for w in waiting if w not in skipped]
                    continue
                ready = [w for w in waiting if w.waits_for == uid]
                waiting = [w for w in waiting if w not in ready]
                submit(ready)
        return failed


@contextlib.contextmanager
def _sigterm_raises():
    """While the driver follows its jobs, SIGTERM (kill, Slurm's own time limit) raises KeyboardInterrupt, so
    that the jobs it submitted are cancelled; kill -9 cannot be caught (cancel those with scancel)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def make_executor(section: ExecutorSection, trainer: Trainer | None = None) -> Executor:
    """The executor a suite's `executor:` block asks for (`trainer`: the local executor's)."""
    if section.kind == "ray":
        return RayExecutor(section)
    if section.kind == "slurm":
        return SlurmExecutor(section)
    return LocalExecutor(trainer)
