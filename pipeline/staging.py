"""Atomic outputs: every file is written under a temporary name beside its final path, and all are
renamed into place only when the whole run has succeeded.

Temporary names are derived from the final path and a run token, so the main process can remove
them even when a worker process was killed before it could say what it had created. The token holds
this host and the run's process id, so a later run can tell the staged files of a run that was
killed (SIGKILL leaves them behind) from those of a run still alive, and remove only the former.
"""
import errno
import hashlib
import logging
import os
import re
import secrets
import socket
from pathlib import Path

from .errors import PipelineError

log = logging.getLogger(__name__)

NAME_MAX = 255  # bytes in one path component, on every common file system
STAGED = re.compile(r"\.(?P<name>.+)\.(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-[0-9a-f]{6}\.part")


def host_tag():
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


class Staging:
    def __init__(self, token=None, checksums=True):
        self.token = token or f"{host_tag()}-{os.getpid()}-{secrets.token_hex(3)}"
        # whether the run reports every file's sha256: the runner then reads back the files whose writer did
        # not compute it while writing (see Writer.checksums)
        self.checksums = checksums

    def temporary(self, final) -> Path:
        """`.NAME.TOKEN.part` beside `final`; a name too long for that is shortened (with a hash of the
        whole name, so two long names stay apart), never the final name itself."""
        final = Path(final)
        name, suffix = final.name, f".{self.token}.part"
        if len(f".{name}{suffix}".encode()) > NAME_MAX:
            digest = hashlib.sha256(name.encode()).hexdigest()[:12]
            room = NAME_MAX - len(f".~{digest}{suffix}".encode())
            name = name.encode()[:room].decode(errors="ignore") + f"~{digest}"
        return final.with_name(f".{name}{suffix}")

    def create(self, final) -> Path:
        """The temporary path to write instead of `final`; its folder is created."""
        temp = self.temporary(final)
        try:
            temp.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as error:  # a file stands where a folder must be
            blocking = next(p for p in temp.parents if p.exists())
            raise NotADirectoryError(errno.ENOTDIR, f"{blocking} is a file, not a folder") from error
        return temp

    def commit(self, finals):
        for final in finals:
            try:
                os.replace(self.temporary(final), final)
            except OSError as error:
                raise PipelineError(f"cannot put {final} in place: {error.strerror or error}") from error

    def discard(self, finals):
        for final in finals:
            temp = self.temporary(final)
            try:
                temp.unlink()
            except (FileNotFoundError, NotADirectoryError):
                pass
            except OSError as error:  # the run's own error is the one to report
                if os.path.lexists(temp):
                    log.warning("cannot remove %s: %s", temp, error.strerror or error)


def sweep(folders):
    """Removes the staged files that killed runs left in these folders: files named like staged files of
    this host whose run is gone (no process with its id, or one that started after the file was last
    written, so the id was reused). Staged files of runs still alive, or of other hosts, stay."""
    host = host_tag()
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:  # no folder yet (nothing to sweep), or one that the run will report on
            continue
        for entry in entries:
            match = STAGED.fullmatch(entry.name)
            if not match or match["host"] != host or not entry.is_file(follow_symlinks=False):
                continue
            try:
                if run_alive(int(match["pid"]), entry.stat(follow_symlinks=False).st_mtime):
                    continue
                os.unlink(entry.path)
                log.info("removed %s, left by a run that was killed", entry.path)
            except OSError:
                pass


def run_alive(pid, written_at):
    """Whether process `pid` is alive and was already running when a file of it was written."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, as another user
        pass
    started = process_start_time(pid)
    return started is None or started <= written_at + 1


def process_start_time(pid):
    """When a process started (seconds since the epoch), from /proc; None where that is not known."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        with open("/proc/stat", "rb") as handle:
            boot = next(int(line.split()[1]) for line in handle if line.startswith(b"btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def file_digest(path):
    """Size and sha256 of a file."""
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    return os.path.getsize(path), digest
