"""Executors: each runs the plan's tasks (run_item.run_task) somewhere and returns their results, in task
order. Nothing comes back through attributes, and what a task needs travels in the plan, which pickles."""
import ctypes
import multiprocessing
import os
import signal
from concurrent.futures import ThreadPoolExecutor

from .background import signals_deferred
from .run_item import describe_outputs, run_task


class Executor:
    """Runs every task of a plan; `progress` gets the points and items done as they are."""

    def run(self, plan, staging, progress) -> list:
        raise NotImplementedError


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
