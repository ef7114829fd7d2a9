"""Where a run keeps its work for one output, and the lock that gives one run per output at a time.

Everything a run writes before the output is finished lives in a hidden folder next to it,
``.NAME.livediff/`` (segments, the processor's saved states, manifest, the playable partial output, the joining temp file, the
lock), so no work file can take a name a user could give an output: a finished
``clip.partial.mp4`` is an output like any other. Cleaning up removes only the names this module
lists; anything else found in the folder is left where it is.

The lock is ``.NAME.livediff/lock`` holding the holder's pid, locked with ``flock``: the kernel
drops the lock when its process dies, however it dies, so a lock left by a dead run is simply taken
over, and a pid recycled by another program cannot keep it held.
"""
from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path
from typing import AbstractSet

from livediff.errors import ConfigError

LOCK_NAME = "lock"
MANIFEST_NAME = "manifest.json"
#: Names a run creates in its work folder; cleaning up touches nothing else.
WORK_FILE = re.compile(r"(manifest\.json(\.tmp)?|seg_\d{6}(\.writing)?\.mp4|state_\d{6}\.pt(\.tmp)?"
                       r"|(partial|joining)\.[a-z0-9]+)")


def work_dir_for(output: Path) -> Path:
    """The hidden folder holding the work of ``output`` while it is being made."""
    return output.parent / f".{output.name}.livediff"


def partial_path_for(output: Path) -> Path:
    """Where an unfinished run leaves its playable partial output: inside the work folder, so it
    can never be a file the user made."""
    return work_dir_for(output) / f"partial{output.suffix.lower()}"


def clear_work(work: Path, keep: AbstractSet[str] = frozenset()) -> None:
    """Remove this run's work files (all but ``keep`` and the lock); never anything else."""
    if not work.is_dir():
        return
    for child in work.iterdir():
        if child.name not in keep and WORK_FILE.fullmatch(child.name):
            child.unlink(missing_ok=True)


class OutputLock:
    """One run per output at a time: hold it from before the model loads until the run ends."""

    def __init__(self, output: Path):
        self.output = output
        self.work = work_dir_for(output)
        self.path = self.work / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        if self.work.exists() and not self.work.is_dir():
            raise ConfigError(f"{self.work} exists and is not livediff's work folder for {self.output}; move it "
                              f"away to write that output")
        self.work.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise ConfigError(f"{self.output} is being written by another livediff run (pid {holder}); wait "
                                  f"for it to finish or stop it, then run again") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a lock file its last holder removed while we were opening it
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None
        try:
            self.work.rmdir()  # only when the run left nothing in it
        except OSError:
            pass

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
