"""Directories that visattn owns: one-component names, ownership markers, a per-directory lock, exact clean-up.

A run or sweep directory is visattn's only if visattn made it (its marker file, or a run's ``config.yaml``); only
such a directory may be overwritten, and a failed call removes only what that same call created. A lock file
inside the directory keeps a second process out for the life of the first.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

from visattn.errors import ConfigError

LOCK = ".lock"
RUN_MARKER = ".visattn-run"


def check_out_dir(out: str | Path) -> list[Path]:
    """Make sure ``out`` is (or can become) a writable folder; create it and return the folders this call created.

    Checked before any work, so a file or a read-only folder as ``--out`` is one clear error, not a traceback later.
    """
    out = Path(out)
    missing: list[Path] = []
    probe = out
    while not probe.exists():
        if probe.is_symlink():  # a dangling link: mkdir would fail with a confusing message
            raise ConfigError(f"--out {out}: {probe} is a broken symbolic link")
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"--out {out} cannot be used: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out} cannot be used: no permission to write in {probe}")
    created = []
    try:
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:
                if not folder.is_dir():
                    raise
                continue  # another run of the same sweep made it in the meantime: theirs, not ours to remove
            created.append(folder)
    except OSError as err:
        remove_created(created)
        raise ConfigError(f"--out {out} cannot be created: {err}") from err
    return created


def remove_created(folders: list[Path]) -> None:
    """Remove the folders a call created (deepest first), each only if it is still empty."""
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:  # not empty, or already gone: it is no longer only ours
            pass


def is_run_dir(path: Path) -> bool:
    """Made by visattn's training: a ``config.yaml`` (any run), or the marker written first thing on creation."""
    return (path / "config.yaml").is_file() or (path / RUN_MARKER).is_file()


def write_marker(path: Path, marker: str = RUN_MARKER) -> None:
    (path / marker).write_text(f"made by visattn (pid {os.getpid()} on {socket.gethostname()}, "
                               f"{time.strftime('%Y-%m-%d %H:%M:%S')}); only visattn deletes this folder\n")


def clear_dir(path: Path, *, keep: tuple[str, ...] = (LOCK, RUN_MARKER)) -> None:
    """Empty a directory visattn owns (``--overwrite``), keeping its lock and marker."""
    for item in path.iterdir():
        if item.name in keep:
            continue
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item)
        else:
            item.unlink()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


class DirLock:
    """An exclusive lock on a directory, held until ``release`` (or the death of the process, SIGKILL included).

    POSIX ``flock`` on ``<dir>/.lock``: the kernel drops it when the holder dies, so a stale lock never blocks.
    The file records the holder's pid and host for the refusal message. Where ``flock`` is missing or unsupported
    (some network file systems) the recorded pid decides: a dead holder on this host is taken over.
    """

    def __init__(self, directory: str | Path, *, what: str = "run") -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK
        self.what = what
        self._handle: Any = None

    def holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def _refuse(self, info: dict[str, Any]) -> ConfigError:
        who = f"process {info.get('pid', '?')} on {info.get('host', '?')}"
        since = f" since {info['started']}" if info.get("started") else ""
        return ConfigError(f"{self.what} directory {self.directory} is in use by {who}{since} ({info.get('cmd', '')})"
                           f"; wait for it to finish or stop it, or choose another --name")

    def acquire(self) -> DirLock:
        handle = open(self.path, "a+")
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            handle.close()
            raise self._refuse(self.holder()) from err
        except (ImportError, OSError):  # no flock here: trust a live pid recorded on this host
            info = self.holder()
            same_host = info.get("host") == socket.gethostname()
            pid = info.get("pid")
            if isinstance(pid, int) and pid != os.getpid() and (not same_host or _pid_alive(pid)):
                handle.close()
                raise self._refuse(info) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                 "cmd": " ".join(sys.argv)[:200]}))
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            try:
                self._handle.seek(0)
                self._handle.truncate()
            except OSError:
                pass
            self._handle.close()
            self._handle = None

    @property
    def held(self) -> bool:
        return self._handle is not None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
