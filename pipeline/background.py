"""Running the producer of an iterator in a background thread, a bounded number of items ahead."""
import threading
from queue import Queue

_DONE = object()


def ahead(items, depth=1, name="ahead"):
    """Yields what `items` yields, while a daemon thread produces up to `depth` items in advance.

    numpy, file reads and compressors release the GIL, so the producer's work overlaps the consumer's.
    An exception in the producer is raised in the consumer, where the item would have come.
    """
    queue = Queue(maxsize=depth)

    def produce():
        try:
            for item in items:
                queue.put(item)
            queue.put(_DONE)
        except BaseException as error:  # handed to the consumer
            queue.put(error)

    threading.Thread(target=produce, name=name, daemon=True).start()
    while (item := queue.get()) is not _DONE:
        if isinstance(item, BaseException):
            raise item
        yield item
