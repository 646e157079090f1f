"""One process per run directory: a lock file held for the run's lifetime.

A second launch into a run that is still training would resume beside it and later overwrite its
``model/`` and ``metrics.json``. The lock is a file created with O_EXCL (atomic on every OS and on
network file systems that honour it, unlike fcntl/msvcrt locks), holding who owns it:

    {"pid": 4242, "hostname": "box", "process_started": 1767000000.12, "started": "2026-12-03T10:00:00"}

A lock whose process is gone (killed, power cut) is stale: on the same host it is taken over with a
log line; from another host it cannot be checked, so the error says how to remove it by hand.
Only rank 0 of a distributed run takes it (the other ranks write nothing the lock protects alone).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from poetry_sft.errors import RunDirError

LOCK_FILE = ".poetry_sft.lock"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LockOwner:
    pid: int
    hostname: str
    process_started: float | None  # the process's creation time: a reused pid is not the owner
    started: str

    @classmethod
    def me(cls) -> LockOwner:
        pid = os.getpid()
        return cls(pid, socket.gethostname(), process_start_time(pid), time.strftime("%Y-%m-%dT%H:%M:%S"))

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def parse(cls, text: str) -> LockOwner | None:
        try:
            data: Any = json.loads(text)
            started = data.get("process_started")
            return cls(int(data["pid"]), str(data["hostname"]), started, str(data["started"]))
        except (ValueError, KeyError, TypeError):
            return None  # cut off mid-write by a kill: nobody can own it


def process_start_time(pid: int) -> float | None:
    """When process `pid` started, or None where unknown (no such process, access denied)."""
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def is_alive(owner: LockOwner) -> bool:
    """Whether the lock's owner still runs on this host (a different process under a reused pid is not it).
    psutil (a dependency of accelerate, so always here) works the same on Linux, macOS and Windows, where
    os.kill(pid, 0) would terminate the process."""
    try:
        process = psutil.Process(owner.pid)
        if owner.process_started is not None and abs(process.create_time() - owner.process_started) > 1:
            return False  # the pid was reused
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # exists, owned by another user
        return True


class RunLock:
    """`<run_dir>/.poetry_sft.lock` while this process trains there. acquire() raises RunDirError if taken."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        self.held = False
        # Why a stale lock was taken over (the train command logs it once the run's log file is open)
        self.took_over: str | None = None

    def acquire(self) -> None:
        for _ in range(3):  # a stale lock removed, or another process racing us for it: try again
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(LockOwner.me().to_json())
            except BaseException:  # a full disk: no empty lock left behind to puzzle the next run
                self.path.unlink(missing_ok=True)
                raise
            self.held = True
            return
        raise RunDirError(f"could not lock {self.path.parent}: another process keeps taking {self.path}")

    def release(self) -> None:
        if self.held:
            self.held = False
            self.path.unlink(missing_ok=True)

    def ensure_free(self) -> None:
        """Refuse now if another live process holds the lock (read-only: nothing is taken over or written)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            return
        self._refuse_if_owned(LockOwner.parse(text))

    def _refuse_if_owned(self, owner: LockOwner | None) -> None:
        run_dir = self.path.parent
        if owner is None and time.time() - self.path.stat().st_mtime < 5:
            raise RunDirError(  # created a moment ago, its owner is still writing it
                f"{run_dir} is being locked by another process right now.\n"
                "  Fix: start one run per directory; train elsewhere with run_dir=runs/<new-name>."
            )
        if owner is not None and owner.hostname != socket.gethostname():
            raise RunDirError(
                f"{run_dir} is locked by process {owner.pid} on host {owner.hostname} "
                f"(since {owner.started}): a run may be training there, and two processes in one run "
                "directory overwrite each other.\n"
                f"  Fix: wait for it, or train elsewhere with run_dir=runs/<new-name>; if no poetry_sft runs "
                f"there on {owner.hostname}, delete {self.path}."
            )
        if owner is not None and is_alive(owner):
            raise RunDirError(
                f"{run_dir} is in use: process {owner.pid} (started {owner.started}) is training there, "
                "and a second process would resume beside it and overwrite its results.\n"
                f"  Fix: wait for it to finish (or stop it: kill {owner.pid}), or train elsewhere with "
                "run_dir=runs/<new-name>."
            )

    def _take_over_if_stale(self) -> None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return  # released meanwhile
        owner = LockOwner.parse(text)
        run_dir = self.path.parent
        self._refuse_if_owned(owner)
        # Stale. Move it aside under a unique name (atomic: of two processes taking over, one moves it),
        # and make sure what was moved is the stale lock that was read, not a new owner's.
        aside = self.path.with_name(f"{LOCK_FILE}.stale-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if aside.read_text(encoding="utf-8") != text:  # another process took it over first: give it back
            os.rename(aside, self.path)
            return
        aside.unlink()
        why = f"process {owner.pid} (started {owner.started}) is no longer running" if owner else "unreadable"
        self.took_over = f"took over the stale lock of {run_dir}: {why}"
        log.debug(self.took_over)
