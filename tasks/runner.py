"""Running Luigi tasks for the command line: a failure ends the command, with the task's message.

Luigi's own worker, with ``keep_alive``, waits for pending tasks indefinitely, and after a failure
the scheduler retries the failed task only after ``retry_delay`` (900 s by default): a command
whose task failed would sit there. :class:`FailFastWorker` stops asking for work as soon as a
task it scheduled has failed, here or on another worker of the same central scheduler, finishes
what it is running and returns. It stays alive (``keep_alive``) only while tasks it depends on
are pending or running on other workers, which is what lets several workers or machines share
one luigid. Failures are reported on stderr as one line per task (the traceback only with
``verbose``, for errors that are not the user's).
"""
from __future__ import annotations

import json
import logging
import socket
import sys
import traceback
from dataclasses import dataclass, field

import luigi
import luigi.interface
import luigi.rpc
import luigi.worker
from luigi.scheduler import DISABLED, FAILED, PENDING

from model.atomic import fault_point
from model.errors import HamucoError


class FailFastWorker(luigi.worker.Worker):
    """A Luigi worker that stops asking for work once a task it scheduled has failed anywhere."""

    failed_elsewhere: dict = {}

    def _failed_elsewhere(self) -> list[str]:
        """Tasks this worker scheduled that failed on any worker. A task the scheduler marked failed
        because its worker vanished (killed, machine lost: no explanation was ever sent) is not a
        failure of the task: it is put back in the queue, for this worker or another."""
        mine = set(self._scheduled_tasks)
        failed = []
        for status in (FAILED, DISABLED):
            try:
                listed = self._scheduler.task_list(status=status, upstream_status="", limit=False)
            except Exception:  # a scheduler that cannot answer: keep luigi's own behaviour
                return []
            for tid in listed:
                if tid not in mine or tid in self._running_tasks:
                    continue
                if status == FAILED and not _remote_error(self, tid, default=""):
                    self._requeue(tid)
                    continue
                failed.append(tid)
        if failed:
            self.failed_elsewhere = {tid: self._scheduled_tasks[tid] for tid in failed}
        return failed

    def _requeue(self, task_id: str) -> None:
        task = self._scheduled_tasks[task_id]
        self._add_task(worker=self._id, task_id=task_id, status=PENDING, runnable=True,
                       params=task.to_str_params(), family=task.task_family, module=task.task_module,
                       resources=task.process_resources(), assistant=self._assistant,
                       retry_policy_dict=luigi.worker._get_retry_policy_dict(task))

    def _get_work(self):
        if not self._stop_requesting_work and (not self.run_succeeded or self._failed_elsewhere()):
            self._start_phasing_out()
        return super()._get_work()

    def _keep_alive(self, get_work_response):
        # Luigi counts only pending tasks; a task this worker needs may also be running on another
        # worker (or on one that was killed, which the scheduler notices after its disconnect delay)
        alive = super()._keep_alive(get_work_response) or (
            self._config.keep_alive and not self._stop_requesting_work and bool(get_work_response.running_tasks))
        if alive:
            fault_point("worker-idle", self._id)
        return alive

    def _handle_next_task(self):
        super()._handle_next_task()
        if not self.run_succeeded and not self._stop_requesting_work:
            self._start_phasing_out()


class _FailFastFactory(luigi.interface._WorkerSchedulerFactory):
    def __init__(self, keep_alive: bool):
        self.keep_alive = keep_alive

    def create_worker(self, scheduler, worker_processes, assistant=False):
        return FailFastWorker(scheduler=scheduler, worker_processes=worker_processes, assistant=assistant,
                              keep_alive=self.keep_alive, wait_interval=0.5)


def _remote_error(worker, task_id: str, default: str = "see that worker's output") -> str:
    """The explanation another worker sent the scheduler (one line for a user's error)."""
    try:
        expl = worker._scheduler.fetch_error(task_id).get("error") or ""
        expl = json.loads(expl) if expl.startswith('"') else expl
    except Exception:
        expl = ""
    expl = (expl or "").strip()
    if not expl:
        return default
    lines = expl.splitlines()
    return lines[0] if not lines[0].startswith("Runtime error") else lines[-1]


def check_scheduler(host: str, port: int, timeout: float = 5.0) -> None:
    """Refuse at once (not after Luigi's minute of retries) a central scheduler that does not answer."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise HamucoError(f"cannot reach the central scheduler (luigid) at {host}:{port} "
                          f"({exc.strerror or exc}); start it with 'luigid --address {host} --port {port}', "
                          "or leave out --scheduler-host to use a local scheduler") from None


def failure_message(exc: BaseException) -> str:
    """One line for a user's error, the exception type for anything else."""
    if isinstance(exc, HamucoError):
        return str(exc)
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


@dataclass
class RunResult:
    ok: bool
    failures: list[str] = field(default_factory=list)


class _UserErrorFilter(logging.Filter):
    """Luigi logs a failed task with its traceback; for a HamucoError the message is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], HamucoError):
            record.msg = f"{record.getMessage()}: {record.exc_info[1]}"
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


def run_tasks(tasks: list, workers: int = 1, scheduler_host: str | None = None, scheduler_port: int = 8082,
              verbose: bool = False, prefix: str = "hamuco") -> RunResult:
    """Build ``tasks`` with Luigi (a local scheduler, or the luigid at ``scheduler_host``).

    Every failure is printed at once on stderr as ``<prefix>: error: <Task> failed: <message>``
    (from whichever process ran the task); the run returns as soon as running tasks end.
    """
    failures: list[str] = []

    def report(task, exc, what: str = "failed") -> None:
        line = f"{task.task_family} {what}: {failure_message(exc)}"
        failures.append(line)
        print(f"{prefix}: error: {line}", file=sys.stderr, flush=True)
        if verbose and not isinstance(exc, HamucoError):
            traceback.print_exception(exc, file=sys.stderr)

    def on_failure(task, exc):  # noqa: ANN001 — in the process that ran the task
        report(task, exc)

    def on_broken(task, exc):  # noqa: ANN001 — complete() or requires() raised while scheduling
        report(task, exc, "cannot be scheduled")

    handlers = [(luigi.Event.FAILURE, on_failure), (luigi.Event.BROKEN_TASK, on_broken)]
    for event, fn in handlers:
        luigi.Task.event_handler(event)(fn)
    for name in ("luigi-interface", "luigi"):
        logging.getLogger(name).addFilter(_UserErrorFilter())
    kwargs = {"workers": workers, "log_level": "INFO" if verbose else "CRITICAL",
              "worker_scheduler_factory": _FailFastFactory(keep_alive=bool(scheduler_host))}
    if scheduler_host:
        kwargs.update(scheduler_host=scheduler_host, scheduler_port=scheduler_port)
    else:
        kwargs["local_scheduler"] = True
    if scheduler_host:
        check_scheduler(scheduler_host, scheduler_port)
    try:
        result = luigi.build(tasks, detailed_summary=True, **kwargs)
    except luigi.rpc.RPCError as exc:
        raise HamucoError(f"lost the central scheduler at {scheduler_host}:{scheduler_port} ({exc.args[0]})") from None
    finally:
        for event, fn in handlers:
            luigi.Task.remove_event_handler(event, fn)
    try:
        ok = result.scheduling_succeeded and all(t.complete() for t in tasks)
    except Exception:
        ok = False
    if ok:
        return RunResult(True)
    for tid, task in getattr(result.worker, "failed_elsewhere", {}).items():
        line = f"{task.task_family} failed on another worker: {_remote_error(result.worker, tid)}"
        failures.append(line)
        print(f"{prefix}: error: {line}", file=sys.stderr, flush=True)
    if not failures and result.status.name not in ("FAILED", "FAILED_AND_SCHEDULING_FAILED"):
        # a task that failed in a worker process has printed its message there already
        status = result.status.name.lower().replace("_", " ")
        failures.append(f"the tasks did not complete ({status})")
        print(f"{prefix}: error: the tasks did not complete (Luigi: {status}); run the command again, or with "
              "--verbose for Luigi's summary", file=sys.stderr, flush=True)
    return RunResult(False, failures)
