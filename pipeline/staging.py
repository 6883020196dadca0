"""Atomic outputs: every file is written under a temporary name beside its final path, and all are
renamed into place only when the whole run has succeeded.

Temporary names are derived from the final path and a run token, so the main process can remove
them even when a worker process was killed before it could say what it had created.
"""
import hashlib
import os
import secrets
from pathlib import Path

from .errors import PipelineError


class Staging:
    def __init__(self, token=None, checksums=True):
        self.token = token or secrets.token_hex(6)
        # whether the run reports every file's sha256: the runner then reads back the files whose writer did
        # not compute it while writing (see Writer.checksums)
        self.checksums = checksums

    def temporary(self, final) -> Path:
        final = Path(final)
        return final.with_name(f".{final.name}.{self.token}.part")

    def create(self, final) -> Path:
        """The temporary path to write instead of `final`; its folder is created."""
        temp = self.temporary(final)
        temp.parent.mkdir(parents=True, exist_ok=True)
        return temp

    def commit(self, finals):
        for final in finals:
            try:
                os.replace(self.temporary(final), final)
            except OSError as error:
                raise PipelineError(f"cannot put {final} in place: {error.strerror or error}") from error

    def discard(self, finals):
        for final in finals:
            try:
                self.temporary(final).unlink()
            except FileNotFoundError:
                pass


def file_digest(path):
    """Size and sha256 of a file."""
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    return os.path.getsize(path), digest
