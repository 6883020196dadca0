"""Executors: each runs the plan's tasks (run_item.run_task) somewhere and returns their results, in task
order. Nothing comes back through attributes, and what a task needs travels in the plan, which pickles."""
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

from .background import signals_deferred
from .errors import PipelineError
from .imports import require
from .run_item import describe_outputs, run_task

log = logging.getLogger(__name__)


class Executor:
    """Runs every task of a plan; `progress` gets the points and items done as they are."""

    def run(self, plan, staging, progress) -> list:
        raise NotImplementedError

    def describe(self) -> dict:
        """What the run report says of the executor."""
        return {"name": "in-process"}


class InProcess(Executor):
    """Tasks one after another in this process. The source may fetch items ahead (downloads), and each
    item's outputs are read back for their checksums in a thread while the next item runs (hashlib
    releases the GIL)."""

    def run(self, plan, staging, progress):
        plan.stages.source.prefetch(plan.items, plan.decisions[0] if plan.decisions else {})
        pending = []
        with ThreadPoolExecutor(1, thread_name_prefix="checksums") as checksums:
            def done(result):
                pending.append(checksums.submit(describe_outputs, plan, result, staging))
                progress.item_done()

            results = [run_task(plan, task, staging, progress.advance, done) for task in plan.tasks]
            for future in pending:
                future.result()
        return results


class LocalProcesses(Executor):
    """Tasks in `jobs` worker processes of this machine, started with `start_method` (fork or spawn). The
    plan is sent to each worker once, when it starts; progress comes back through a queue.

    The command line forks its workers before its main process reads any LAZ points: a process forked after
    lazrs has run its thread pool hangs in that pool. Use spawn where that cannot be ruled out."""

    def __init__(self, jobs, start_method="fork"):
        self.jobs, self.start_method = jobs, start_method

    def describe(self):
        return {"name": "processes", "jobs": self.jobs, "start_method": self.start_method}

    def run(self, plan, staging, progress):
        context = multiprocessing.get_context(self.start_method)
        queue = context.SimpleQueue()
        results = {}
        pool = None
        try:
            with signals_deferred():  # a worker forked with the main process's handler would raise on Ctrl-C
                pool = context.Pool(min(self.jobs, len(plan.tasks)), initializer=_worker_init,
                                    initargs=(plan, staging, queue, os.getpid()))
            pending = pool.imap_unordered(_worker_run, list(enumerate(plan.tasks)))
            while len(results) < len(plan.tasks):
                try:
                    number, result = pending.next(timeout=0.2)
                    results[number] = result
                    for _ in result.items:
                        progress.item_done()
                except multiprocessing.TimeoutError:
                    pass
                while not queue.empty():
                    progress.advance(queue.get())
            pool.close()
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
        return [results[number] for number in range(len(plan.tasks))]


class DaskExecutor(Executor):
    """Tasks on a Dask distributed cluster: the scheduler at `scheduler`, else DASK_SCHEDULER_ADDRESS, else a
    LocalCluster of `workers` processes on this machine. The plan is scattered to every worker once; each task
    runs run_task there, writing staged files on a filesystem every worker and this process see, and this
    process commits them. A task lost with its worker is run again, up to `retries` times; a task that fails
    with a pipeline error fails the run. On a failure or Ctrl-C every task still running is told to stop, and
    each removes its own staged files."""

    def __init__(self, scheduler=None, workers=1, retries=1, connect_timeout=10.0):
        self.scheduler = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS") or None
        self.workers, self.retries, self.connect_timeout = workers, retries, connect_timeout
        self.address = None

    def describe(self):
        return {"name": "dask", "scheduler": self.address, "retries": self.retries}

    def run(self, plan, staging, progress):
        distributed = require("distributed", "--executor dask")
        with self.connected(distributed) as client:
            self.address = client.scheduler.address
            stop = distributed.Event(f"pipeline-stop-{staging.token}", client=client)
            points = distributed.Queue(f"pipeline-points-{staging.token}", client=client)
            shared = client.scatter([plan], broadcast=True, hash=False)
            futures, results, lost = {}, {}, {}

            def submit(number):
                key = f"pipeline-{staging.token}-{number}-{lost.get(number, 0)}"
                future = client.submit(_dask_task, shared[0], plan.tasks[number], staging, stop.name, points.name,
                                       key=key, pure=False)
                futures[future] = number

            try:
                for number in range(len(plan.tasks)):
                    submit(number)
                while futures:
                    done = [future for future in futures if future.done()]
                    if not done:
                        time.sleep(0.05)
                    for future in done:
                        number = futures.pop(future)
                        # a task lost with its worker: an error, or cancelled when the scheduler forgot it
                        if future.status == "cancelled" or (future.status == "error" and isinstance(
                                future.exception(), distributed.KilledWorker)):
                            names = ", ".join(i.name for i in plan.task_items(plan.tasks[number]))
                            lost[number] = lost.get(number, 0) + 1
                            if lost[number] > self.retries:
                                raise PipelineError(f"Dask workers were lost {lost[number]} times running {names} "
                                                    f"(--retries {self.retries})")
                            log.warning("a Dask worker was lost running %s; running it again (%d of %d)", names,
                                        lost[number], self.retries)
                            shared = client.scatter([plan], broadcast=True, hash=False)  # its copy may be gone too
                            submit(number)
                            continue
                        result, error = future.result()
                        if error is not None:
                            raise error
                        results[number] = result
                        for _ in result.items:
                            progress.item_done()
                    for count in _drain(points):
                        progress.advance(count)
            except BaseException:
                self.stop(stop, list(futures))
                raise
        return [results[number] for number in range(len(plan.tasks))]

    @contextlib.contextmanager
    def connected(self, distributed):
        """A client of the scheduler, or of a LocalCluster started for the run (and closed with it)."""
        if self.scheduler:
            try:
                client = distributed.Client(self.scheduler, timeout=self.connect_timeout, set_as_default=False)
            except (OSError, distributed.TimeoutError, ValueError) as error:
                raise PipelineError(f"--scheduler {self.scheduler}: no Dask scheduler answered within "
                                    f"{self.connect_timeout:g} s ({error})") from None
            with client:
                yield client
            return
        import dask
        # a task lost with its worker fails at once, and run() counts the retries
        with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
                distributed.LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                         dashboard_address=None, silence_logs=logging.ERROR) as cluster, \
                distributed.Client(cluster, set_as_default=False) as client:
            yield client

    @staticmethod
    def stop(stop, futures, wait=10.0):
        """Tells the running tasks to stop, and waits a while for them to remove their staged files."""
        try:
            stop.set()
            deadline = time.monotonic() + wait
            while not all(future.done() for future in futures) and time.monotonic() < deadline:
                time.sleep(0.05)
        except Exception:  # the cluster may be gone; the runner still removes what it can see
            pass


def _drain(queue):
    try:
        return queue.get(batch=True)
    except Exception:  # an empty queue, or a scheduler going away
        return []


class DaskProgress:
    """A Dask task's progress: points sent to the client in batches, and the stop flag looked at meanwhile."""

    INTERVAL = 0.25  # seconds between messages

    def __init__(self, stop, queue):
        self.stop, self.queue, self.count, self.sent = stop, queue, 0, time.monotonic()

    def __call__(self, count):
        self.count += count
        if time.monotonic() - self.sent >= self.INTERVAL:
            self.flush()
            if self.stop.is_set():
                raise PipelineError("stopped: the run failed elsewhere or was interrupted")

    def flush(self):
        if self.count:
            self.queue.put(self.count)
        self.count, self.sent = 0, time.monotonic()


def _dask_task(plan, task, staging, stop_name, queue_name):
    """One task on a Dask worker: (result, None), or (None, the pipeline error) so that Dask does not retry
    it. Whatever the outcome, a task that did not succeed removes the staged files it wrote."""
    import distributed
    progress = DaskProgress(distributed.Event(stop_name), distributed.Queue(queue_name))
    try:
        result = run_task(plan, task, staging, progress)
        for item in result.items:
            describe_outputs(plan, item, staging)
        progress.flush()
        return result, None
    except PipelineError as error:
        staging.discard(plan.task_targets(task))
        return None, error
    except BaseException:
        staging.discard(plan.task_targets(task))
        raise


_worker = {}
PR_SET_PDEATHSIG = 1  # from linux/prctl.h


def die_with_parent(parent):
    """Has the kernel kill this worker when the process that started it dies (even by SIGKILL), so that
    no worker goes on writing for a run that is gone. Linux only; elsewhere workers end with their task."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request was made
        os._exit(1)


def _worker_init(plan, staging, queue, parent):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the main process ends its workers with SIGTERM
    die_with_parent(parent)
    _worker.update(plan=plan, staging=staging, queue=queue)


def _worker_run(numbered):
    number, task = numbered
    plan, staging = _worker["plan"], _worker["staging"]
    result = run_task(plan, task, staging, _worker["queue"].put)
    for item in result.items:
        describe_outputs(plan, item, staging)
    return number, result


def cpu_count():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
