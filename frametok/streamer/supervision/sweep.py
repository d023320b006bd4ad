"""What a run leaves behind when its supervisor is killed outright (SIGKILL, the OOM killer): its temp folder
``frametok-<run>-*`` and its shared-memory rings ``/dev/shm/frametok-<run>-<stream>-<n>``.

A supervisor holds an exclusive ``flock`` on ``<run folder>/supervisor.lock`` for as long as it lives (the
kernel lets go of it when the process dies, however it dies). At start-up a supervisor sweeps the run folders
in the temp directory whose lock it can take: their supervisor is gone, so their rings and folder go. It
never touches a folder whose lock is held (a live run, of any frametok process), a folder without a lock
file (a run just starting, or one of a frametok without this lock: unknown), nor anything another user owns.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import logging
import os
import re
import shutil
import tempfile

__all__ = ["LOCK_NAME", "RunLock", "sweep_dead_runs"]

log = logging.getLogger(__name__)

LOCK_NAME = "supervisor.lock"
_RUN_DIR = re.compile(r"frametok-([0-9a-f]{8})-[^/]+")
SHM_DIR = "/dev/shm"


class RunLock:
    """The lock a live supervisor holds on its run folder."""

    def __init__(self, rundir: str) -> None:
        # locked under a temporary name first, then renamed into place: a sweeper that finds the lock file
        # always finds it held
        tmp = os.path.join(rundir, f".{LOCK_NAME}.{os.getpid()}")
        self.fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(self.fd, f"{os.getpid()}\n".encode())
        os.rename(tmp, os.path.join(rundir, LOCK_NAME))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _remove_run(rundir: str, run_id: str, shm_dir: str) -> list[str]:
    removed = []
    uid = os.getuid()
    for seg in glob.glob(os.path.join(shm_dir, f"frametok-{run_id}-*")):
        with contextlib.suppress(OSError):
            if os.lstat(seg).st_uid == uid:
                os.unlink(seg)
                removed.append(seg)
    shutil.rmtree(rundir, ignore_errors=True)
    removed.append(rundir)
    return removed


def sweep_dead_runs(tmpdir: str | None = None, shm_dir: str = SHM_DIR) -> list[str]:
    """Remove the run folders (and their rings) of supervisors that are gone; returns the paths removed."""
    removed: list[str] = []
    uid = os.getuid()
    for rundir in glob.glob(os.path.join(tmpdir or tempfile.gettempdir(), "frametok-*-*")):
        match = _RUN_DIR.fullmatch(os.path.basename(rundir))
        if match is None:
            continue
        try:
            st = os.lstat(rundir)
            if st.st_uid != uid or not os.path.isdir(rundir) or os.path.islink(rundir):
                continue
            fd = os.open(os.path.join(rundir, LOCK_NAME), os.O_RDWR | os.O_NOFOLLOW)
        except OSError:  # no lock file (starting, or an older frametok's run), or not ours
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # held: a live run
            gone = _remove_run(rundir, match.group(1), shm_dir)
            log.warning("removed what a killed run left behind: %s", ", ".join(gone))
            removed += gone
        finally:
            os.close(fd)
    return removed
