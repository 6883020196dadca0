"""Background threads: starting one safely, and running the producer of an iterator a bounded number of
items ahead."""
import queue
import signal
import threading
from contextlib import contextmanager

_DONE = object()
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def signals_deferred():
    """Runs a block that a Ctrl-C must not break off halfway, such as starting a thread and recording it
    for the cleanup that waits for it (Thread.start waits, and a signal handler may raise there, after
    the thread has started). SIGINT and SIGTERM received meanwhile are delivered when the block ends.
    Signal handlers belong to the main thread: elsewhere the block just runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = {signum: signal.signal(signum, lambda signum, frame: received.append(signum))
                for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in received:
            signal.raise_signal(signum)


def ahead(items, depth=1, name="ahead"):
    """Yields what `items` yields, while a thread produces up to `depth` items in advance.

    numpy, file reads and compressors release the GIL, so the producer's work overlaps the consumer's.
    An exception in the producer is raised in the consumer, where the item would have come. When the
    consumer stops early (an error, Ctrl-C, or closing this generator), the producer stops after the
    item it is making and is waited for: no thread is left blocked, or still inside a library, when the
    process exits.
    """
    handed = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        handed.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        pass
                if stop.is_set():
                    return
            handed.put(_DONE)
        except BaseException as error:  # handed to the consumer
            handed.put(error)

    producer = threading.Thread(target=produce, name=name, daemon=True)
    with signals_deferred():
        producer.start()
    try:
        while (item := handed.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while producer.is_alive():
            try:  # make room, should the producer be putting its last item or its error
                handed.get(timeout=0.05)
            except queue.Empty:
                pass
        producer.join()
