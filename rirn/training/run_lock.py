"""A lock file that says which job trains a shared teacher, safe across the hosts of a cluster.

:func:`rirn.training.provision.ensure_teacher` uses it so that, of the jobs that need the same
missing teacher (Slurm jobs of one seed started together, say), one trains it and the others
wait. The lock is a file created with ``O_EXCL`` that holds ``"host pid"`` of its owner.

* **Heartbeat.** The owner touches the file every :data:`HEARTBEAT_S` seconds
  (:class:`Heartbeat`); a job killed by a time limit or SIGKILL never reaches the code that
  removes its lock, but it stops touching it.
* **Staleness without comparing clocks.** A waiting job calls a lock stale when it has seen the
  file's identity (inode, mtime) unchanged for :data:`STALE_S` seconds of its *own* monotonic
  clock (:class:`LockWatch`), so a node whose clock is off never breaks a live lock. A lock of
  a process of this host that no longer runs is stale at once.
* **One breaker.** Every waiter that finds the lock stale tries to hard-link it to a name made of
  that identity (:func:`break_lock`); ``os.link`` succeeds for one only (atomic on NFS too, the
  classic NFS lock), which removes the lock if the path still is the file it judged.
* **Losing the lock.** If the owner was silent that long and is alive after all (a Slurm job
  suspended for more than :data:`STALE_S`), its heartbeat finds another owner, sets
  :attr:`Heartbeat.lost` and interrupts the main thread, so that two jobs never train into the
  same run directory.
"""

from __future__ import annotations

import _thread
import logging
import os
import socket
import threading
import time
from pathlib import Path

log = logging.getLogger("rirn.train")

__all__ = ["HEARTBEAT_S", "STALE_S", "Heartbeat", "LockWatch", "acquire", "owner_of", "release"]

#: The owner touches its lock this often (seconds).
HEARTBEAT_S = 30.0
#: A lock a waiter has seen unchanged this long (seconds) is a dead job's and is taken over.
#: Twenty heartbeats, so that a busy host or a slow shared file system does not break a live
#: lock.
STALE_S = 600.0


def owner_of(lock: Path) -> str:
    """``"host pid"`` of the job holding ``lock``, as far as it can be read."""
    try:
        return lock.read_text().strip() or "owner not written yet"
    except (OSError, UnicodeError):
        return "owner unknown"


def _identity(path: Path) -> tuple[int, int] | None:
    """``(inode, mtime in ns)`` of ``path``, ``None`` if it cannot be read."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


class LockWatch:
    """What one waiting job has seen of a lock: its identity and since when, on this job's
    monotonic clock (so two hosts' clocks are never compared)."""

    def __init__(self) -> None:
        self.identity: tuple[int, int] | None = None
        self.since = 0.0

    def unchanged_for(self, identity: tuple[int, int]) -> float:
        """Seconds this job has seen ``identity`` without a change (0 the first time)."""
        now = time.monotonic()
        if identity != self.identity:
            self.identity, self.since = identity, now
        return now - self.since


def stale(lock: Path, watch: LockWatch, stale_s: float) -> tuple[int, int] | None:
    """The identity of ``lock`` if its job is dead, else ``None``: unchanged for ``stale_s``
    seconds of ``watch``, or owned by a process of this host that no longer runs."""
    identity = _identity(lock)
    if identity is None:
        return None  # gone: the next attempt creates it
    if watch.unchanged_for(identity) >= stale_s:
        return identity
    try:
        host, pid = lock.read_text().split()
    except (OSError, UnicodeError, ValueError):
        return None  # being written right now, or unreadable: wait
    if host != socket.gethostname():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return identity
    except (PermissionError, ValueError):
        return None
    return None


def break_lock(lock: Path, identity: tuple[int, int], watch: LockWatch, stale_s: float) -> None:
    """Remove the stale lock whose identity is ``identity``, so that exactly one of the waiters
    that found it stale removes it (see the module docstring). A link left by a breaker that
    died half-way is removed once this waiter has seen the lock unchanged for twice
    ``stale_s``, so that the next attempt can break it."""
    tomb = lock.with_name(f"{lock.name}.dead-{identity[0]}-{identity[1]}")
    try:
        os.link(lock, tomb)
    except FileExistsError:
        if watch.unchanged_for(identity) >= 2 * stale_s and _identity(tomb) == identity:
            tomb.unlink(missing_ok=True)
        return
    except FileNotFoundError:
        return
    except OSError as err:  # no hard links here: no safe way to pick one breaker
        log.error(
            f"cannot take over the stale teacher lock {lock} ({err}: this file system has no "
            "hard links); delete it by hand if its job is dead"
        )
        return
    try:
        if _identity(tomb) == identity == _identity(lock):
            lock.unlink()
    except OSError:
        pass
    finally:
        tomb.unlink(missing_ok=True)


def acquire(lock: Path, watch: LockWatch, stale_s: float = STALE_S) -> str | None:
    """Create ``lock`` exclusively and return the owner string written into it, or ``None``
    when a live job holds it. A stale lock is broken and taken over."""
    owner = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            identity = stale(lock, watch, stale_s)
            if identity is None:
                return None
            break_lock(lock, identity, watch, stale_s)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(owner)
        return owner
    return None


def release(lock: Path, owner: str) -> None:
    """Remove ``lock`` if it is still ``owner``'s (not a lock another job took over)."""
    if owner_of(lock) == owner:
        lock.unlink(missing_ok=True)


class Heartbeat:
    """A daemon thread that touches ``lock`` every ``every_s`` seconds while ``owner`` holds it.

    Use as a context manager around the work the lock protects. A failed touch is retried at
    the next beat. When the lock is gone or reads as another job's, :attr:`lost` is set and
    the main thread gets a ``KeyboardInterrupt`` (``_thread.interrupt_main``): the caller
    catches it and checks :attr:`lost`.
    """

    def __init__(self, lock: Path, owner: str, every_s: float = HEARTBEAT_S) -> None:
        self.lock, self.owner, self.every_s = lock, owner, every_s
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        warned = False
        while not self._stop.wait(self.every_s):
            try:
                holder = self.lock.read_text().strip()
                if holder == self.owner:
                    os.utime(self.lock)
                    continue
            except FileNotFoundError:
                holder = "nobody"
            except (OSError, UnicodeError) as err:
                if not warned:
                    log.warning(f"could not refresh the teacher lock {self.lock} ({err}); retrying")
                    warned = True
                continue
            log.warning(
                f"the teacher lock {self.lock} is now held by {holder}: another job took it "
                "over while this one was silent; this job stops training the teacher"
            )
            self.lost.set()
            if not self._stop.is_set():
                _thread.interrupt_main()
            return
