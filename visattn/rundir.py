"""Directories and files visattn owns: names, ownership markers, locks, atomic writes, claims, finished runs.

A run, sweep or output directory is visattn's only if visattn can prove it. Its marker file (``.visattn-run``,
``.visattn-sweep``, ``.visattn-output``) is created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` and holds a random id
that the directory's own record repeats (a run's ``config.yaml`` as ``run_id``, a sweep's ``sweep.json`` as
``sweep_id``). A directory made before the id existed counts only if that record parses as visattn's (a run's
config.yaml as a whole ``TrainConfig``). A lone ``.lock``, a marker typed by hand or copied beside another
record, or any record that does not parse proves nothing. Only a proven directory is ever overwritten; a failed
call removes only what it created; a lock keeps a second process out. Nothing here follows a symbolic link:
not the marker, the lock, the temporary file of a write, nor anything inside a run that is resumed.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import math
import os
import re
import secrets
import shutil
import socket
import stat
import sys
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import yaml

from visattn.config import FIELDS, TrainConfig, held_notices, load_yaml, make_config
from visattn.errors import ConfigError, NonFiniteLossError

LOCK = ".lock"
RUN_MARKER = ".visattn-run"
SWEEP_MARKER = ".visattn-sweep"
OUTPUT_MARKER = ".visattn-output"  # a folder of predict drawings or visualize figures
MAX_RECORD_BYTES = 16 << 20  # markers, config.yaml, metrics.json, report.json: far larger than any real one
_ID = re.compile(r"[0-9a-f]{32}")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
# The files of a run directory (``visattn.training`` writes them; everything that reads a run reads them through here)
CONFIG_FILE = "config.yaml"  # the resolved TrainConfig, with the marker's run_id
METRICS_FILE = "metrics.json"  # written once the run has finished (test metrics, throughput, classes, in_chans)
ERROR_FILE = "error.json"  # why the last attempt failed; removed when an attempt starts or succeeds
START_FILE = "pretrained.json"  # a pretrained run's load report and metrics before its first step
CHECKPOINTS = "checkpoints"  # best.ckpt, last.ckpt
LOGS = "logs"  # metrics.csv (Lightning's CSV logger) and metrics.partN.csv of earlier parts of a resumed run
METRICS_CSV = "metrics.csv"
# TrainConfig keys every config.yaml has held since the first version: a legacy run's config.yaml has them all
LEGACY_RUN_KEYS = frozenset({
    "task", "backbone", "attn", "backbone_args", "neck", "scale", "data", "data_dir", "data_args", "img_size",
    "augment", "limit", "skip_bad_images", "epochs", "batch_size", "lr", "weight_decay", "optimizer", "momentum",
    "label_smoothing", "warmup_epochs", "early_stopping", "seed", "pretrained", "num_workers", "out", "name",
    "resume", "overwrite", "accelerator", "devices", "strategy", "num_nodes", "precision", "trainer",
    "visualize_every"})


# ---------------------------------------------------------------------------------------------- reading files
class NotRegularFile(ConfigError):
    """A path visattn reads for itself is a symbolic link, a FIFO, a device or a folder."""


def read_file(path: str | Path, *, limit: int = MAX_RECORD_BYTES, head: bool = False) -> bytes:
    """The bytes of a regular file, opened without following a final symbolic link and without blocking on a FIFO.

    ``FileNotFoundError`` when it does not exist; ``NotRegularFile`` for a link, FIFO, device or folder;
    ``ConfigError`` when it is larger than ``limit`` bytes (``head``: its first ``limit`` bytes instead).
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC)
    except OSError as err:
        if err.errno == errno.ELOOP or path.is_symlink():
            raise NotRegularFile(f"{path} is a symbolic link; visattn never follows links for its own files "
                                 "(markers, locks, configs, metrics, checkpoints)") from None
        if err.errno == errno.EISDIR:
            raise NotRegularFile(f"{path} is a folder, not a file") from None
        raise
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFile(f"{path} is not a regular file (a FIFO, socket, device or folder)")
        if info.st_size > limit and not head:
            raise ConfigError(f"{path} is {info.st_size / 1e6:.1f} MB, more than visattn reads for such a file "
                              f"({limit / 1e6:.0f} MB)")
        return handle.read(limit)


def is_regular(path: Path) -> bool:
    """A regular file itself, not a link to one (``Path.is_file`` follows links)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------- atomic writes
class WriteError(OSError):
    """A file visattn could not write; the message names the file and its folder, and a full disk says so."""


def write_failure(path: Path, err: OSError) -> WriteError:
    reason = err.strerror or str(err)
    hint = ""
    if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        hint = ("; the disk (or your quota) is full: free space there and run the command again (a run continues "
                "from its last checkpoint with --resume; nothing half-written was left behind)")
    failure = WriteError(f"cannot write {path} (folder {path.parent}): {reason}{hint}")
    failure.errno, failure.strerror, failure.filename = err.errno, reason, str(path)
    return failure


def open_tmp(tmp: Path, final: Path) -> BinaryIO:
    """The temporary file of an atomic write of ``final``: always a new file (``O_EXCL``), never through a link."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o644)
    return os.fdopen(fd, "wb")


class _Recording:
    """Passes writes through and keeps the first ``OSError`` a write raised: torch.save reports a failed write of
    its zip stream as a C++ ``RuntimeError``, and the disk-full cause must not be lost."""

    def __init__(self, handle: Any) -> None:
        self.handle, self.error = handle, None

    def write(self, data: Any) -> int:
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # removes a link itself, never what it points to


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Any]:
    """A binary handle whose content replaces ``path`` only once it is complete (temporary file in the same folder,
    fsync, rename). Any failure removes the temporary file and leaves ``path`` as it was; a failed write (a full
    disk included) is a ``WriteError`` naming the file and its folder."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    _unlink(tmp)  # left by a writer that was killed
    try:
        handle = _Recording(open_tmp(tmp, path))
    except OSError as err:
        raise write_failure(path, err) from err
    try:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            handle.close()
        _unlink(tmp)
        cause = handle.error or (err if isinstance(err, OSError) and not isinstance(err, WriteError) else None)
        if cause is not None:
            raise write_failure(path, cause) from err
        raise


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Replace ``path`` with ``data`` (text is written as UTF-8) atomically; see :func:`atomic_file`."""
    with atomic_file(path) as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)


def write_figure(figure: Any, path: str | Path, *, dpi: int) -> None:
    """A matplotlib figure as PNG, written atomically: a link at ``path`` is replaced, never written through."""
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    write_atomic(path, buffer.getvalue())


# ----------------------------------------------------------------------------------------------------- markers
def _marker_payload(made_by: str, ident: str) -> bytes:
    return (json.dumps({"made_by": made_by, "id": ident, "pid": os.getpid(), "host": socket.gethostname(),
                        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                        "note": "only visattn deletes this folder"}) + "\n").encode()


def create_marker(folder: Path, marker: str, *, made_by: str) -> str:
    """Create ``folder/marker`` (``O_CREAT | O_EXCL | O_NOFOLLOW``) with a new random id; returns the id."""
    ident = secrets.token_hex(16)
    fd = os.open(folder / marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(_marker_payload(made_by, ident))
    return ident


def renew_marker(folder: Path, marker: str, *, made_by: str) -> str:
    """Replace an older marker (no id, or half-written by a kill) with a new one, atomically; returns the id."""
    ident = secrets.token_hex(16)
    write_atomic(folder / marker, _marker_payload(made_by, ident))
    return ident


def marker_id(folder: Path, marker: str) -> str | None:
    """The id in ``folder/marker``; ``""`` for a marker without one (an older visattn's, or a fake), None when there
    is none. ``NotRegularFile`` for a marker that is a link, FIFO or folder: it is never followed."""
    try:
        text = read_file(folder / marker, limit=1 << 16)
    except FileNotFoundError:
        return None
    except NotRegularFile as err:
        raise NotRegularFile(f"{err}: {folder} is not treated as visattn's; remove {folder / marker} (not what it "
                             "points to) if the folder is yours") from None
    except ConfigError:
        return ""
    try:
        ident = json.loads(text).get("id")
    except (ValueError, AttributeError):
        return ""
    return ident if isinstance(ident, str) and _ID.fullmatch(ident) else ""


# --------------------------------------------------------------------------------------------- run directories
def load_record(path: Path) -> dict[str, Any] | None:
    """A YAML/JSON mapping record of a directory (``config.yaml``, ``sweep.json``), None when it does not exist.
    ConfigError when it is a link, not a regular file, too large, not YAML or not a mapping."""
    try:
        data = read_file(path)
    except FileNotFoundError:
        return None
    values = load_yaml(data.decode("utf-8", errors="replace"), source=str(path))
    if not isinstance(values, dict):
        raise ConfigError(f"{path} does not hold a mapping")
    return values


def save_config(config: TrainConfig, path: str | Path) -> None:
    """A run's config.yaml, written atomically: a kill never leaves half of one."""
    write_atomic(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def is_train_config(values: dict[str, Any]) -> bool:
    """Does a config.yaml without a run id parse as a whole visattn ``TrainConfig`` (a run made before the id)?"""
    if not LEGACY_RUN_KEYS <= set(values):
        return False
    try:
        with held_notices():
            make_config({}, {k: v for k, v in values.items() if k in FIELDS and k != "run_id"}, source="config.yaml")
    except (ConfigError, TypeError, ValueError):
        return False
    return True


def marker_proof(folder: Path, *, marker: str, record_file: str, id_key: str,
                 legacy: Callable[[dict[str, Any]], str | None]) -> str | None:
    """Why ``folder`` is not a directory visattn made, or None when it is: the proof shared by runs and sweeps.

    Proof: the ``marker``'s id equals the ``record_file``'s ``id_key``; or, for a folder made before the id existed,
    a record without ``id_key`` that ``legacy(record)`` accepts (it returns None, else why not). A marker alone
    proves nothing; neither does a link.
    """
    if folder.is_symlink():
        return "it is a symbolic link"
    if not folder.is_dir():
        return "it is not a folder"
    try:
        ident = marker_id(folder, marker)
        record = load_record(folder / record_file)
    except ConfigError as err:
        return str(err)
    if record is None:
        return f"it has no {record_file}" + ("" if ident else f" and no {marker} marker with an id")
    recorded = record.get(id_key)
    if recorded:
        return None if ident and recorded == ident else (
            f"its {record_file} records {id_key} {recorded!r}, which its {marker} marker does not hold")
    return legacy(record)


def run_proof(folder: Path) -> str | None:
    """Why ``folder`` is not a run directory visattn made, or None when it is (:func:`marker_proof`; a run made
    before the id existed proves itself by a config.yaml that parses as a whole TrainConfig). A run stopped during
    its set-up holds only its marker; such a folder is adopted as empty by ``claim_run_dir``."""
    return marker_proof(folder, marker=RUN_MARKER, record_file=CONFIG_FILE, id_key="run_id", legacy=lambda record: (
        None if is_train_config(record) else
        f"its {CONFIG_FILE} is not a visattn run's (it does not parse as a whole TrainConfig)"))


def is_run_dir(path: str | Path) -> bool:
    """Made by visattn's training, provably (see :func:`run_proof`)."""
    return run_proof(Path(path)) is None


def ensure_marker(folder: Path, marker: str = RUN_MARKER, *, made_by: str = "visattn train") -> str:
    """The id of ``folder``'s marker; an older marker without one (or none) is replaced by a new one first."""
    ident = marker_id(folder, marker)
    if ident:
        return ident
    return renew_marker(folder, marker, made_by=made_by) if ident == "" else create_marker(folder, marker,
                                                                                           made_by=made_by)


def check_tree(folder: Path, *, what: str = "run directory") -> None:
    """Refuse a directory that holds a symbolic link or a non-regular file anywhere inside: visattn never writes
    (or reads its checkpoints, logs and metrics) through one. Checked before a resume changes anything."""
    for root, dirs, files in os.walk(folder):  # followlinks=False: a link to a folder is listed, not entered
        for name in [*dirs, *files]:
            path = Path(root) / name
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                raise ConfigError(f"{what} {folder} holds a symbolic link, {path} (-> {os.readlink(path)}): visattn "
                                  "never writes or reads its checkpoints, logs or metrics through a link, so nothing "
                                  "was changed; remove the link (what it points to stays) and run the command again")
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise ConfigError(f"{what} {folder} holds {path}, which is not a regular file (a FIFO, socket or "
                                  "device); nothing was changed; remove it and run the command again")


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


def clear_dir(path: Path, *, keep: tuple[str, ...] = (LOCK, RUN_MARKER)) -> None:
    """Empty a directory visattn owns (``--overwrite``), keeping its lock and marker; links are removed, not
    followed."""
    for item in path.iterdir():
        if item.name in keep:
            continue
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item)
        else:
            item.unlink()


# -------------------------------------------------------------------------------------------------------- locks
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


_HELD_LOCKS: weakref.WeakSet[DirLock] = weakref.WeakSet()


def _forget_locks_in_child() -> None:
    """After ``fork`` (a DataLoader worker, a helper process): close this child's copies of the lock descriptors.

    A ``flock`` belongs to the open file, shared by every copy of the descriptor; without this, loader workers
    orphaned by a killed trainer would keep its run locked until they notice and exit. The parent's copy keeps
    the lock; the child's ``release`` then does nothing.
    """
    for lock in list(_HELD_LOCKS):
        if lock._fd is not None:
            with contextlib.suppress(OSError):
                os.close(lock._fd)
            lock._fd = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_locks_in_child)


class DirLock:
    """An exclusive lock on a directory, held until ``release`` (or the death of the process, SIGKILL included).

    POSIX ``flock`` on ``<dir>/.lock``: the kernel drops it when the holder dies, so a stale lock never blocks;
    forked children (loader workers) do not keep it (see ``_forget_locks_in_child``). The file is opened without
    following a link and must be a regular file. It records the holder's pid and host for the refusal message.
    Where ``flock`` is missing or unsupported (some network file systems) the recorded pid decides: a dead holder
    on this host is taken over.
    """

    def __init__(self, directory: str | Path, *, what: str = "run") -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK
        self.what = what
        self._fd: int | None = None

    def holder(self) -> dict[str, Any]:
        try:
            return json.loads(read_file(self.path, limit=1 << 16) or b"{}")
        except (OSError, ValueError):
            return {}

    def _refuse(self, info: dict[str, Any]) -> ConfigError:
        who = f"process {info.get('pid', '?')} on {info.get('host', '?')}"
        since = f" since {info['started']}" if info.get("started") else ""
        return ConfigError(f"{self.what} directory {self.directory} is in use by {who}{since} ({info.get('cmd', '')})"
                           f"; wait for it to finish or stop it, or choose another --name")

    def _open(self) -> int:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _NONBLOCK | _CLOEXEC, 0o644)
        except OSError as err:
            if err.errno == errno.ELOOP or self.path.is_symlink():
                raise ConfigError(f"{self.path} is a symbolic link; visattn never follows links for its lock, so "
                                  f"nothing was changed; remove {self.path} (what it points to stays) if "
                                  f"{self.directory} is visattn's, or choose another --name") from None
            if err.errno == errno.EISDIR:
                raise ConfigError(f"{self.path} is a folder, not a lock file; nothing was changed; remove it, or "
                                  "choose another --name") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ConfigError(f"{self.path} is not a regular file (a FIFO, socket or device); nothing was changed; "
                              "remove it, or choose another --name")
        return fd

    def acquire(self) -> DirLock:
        fd = self._open()
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            os.close(fd)
            raise self._refuse(self.holder()) from err
        except (ImportError, OSError):  # no flock here: trust a live pid recorded on this host
            info = self.holder()
            same_host = info.get("host") == socket.gethostname()
            pid = info.get("pid")
            if isinstance(pid, int) and pid != os.getpid() and (not same_host or _pid_alive(pid)):
                os.close(fd)
                raise self._refuse(info) from None
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": time.strftime("%Y-%m-%d %H:%M:%S"), "cmd": " ".join(sys.argv)[:200]})
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)
        self._fd = fd
        _HELD_LOCKS.add(self)
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        _HELD_LOCKS.discard(self)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# --------------------------------------------------------------------------------------------- claiming a run
@dataclass
class RunClaim:
    """What a call took or made in a run directory, so a failed set-up undoes exactly that."""

    run_dir: Path
    lock: DirLock
    created_out: list[Path]
    created_run: bool  # this call made the run directory
    adopted_empty: bool  # it existed but was empty: clean what we put in, keep the folder
    existing_run: bool  # it held a run (to be replaced with --overwrite, or resumed)

    def undo(self) -> None:
        if self.created_run:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        elif self.adopted_empty:
            clear_dir(self.run_dir, keep=())
        self.lock.release()
        remove_created(self.created_out)


SETUP_LEFTOVERS = (LOCK, RUN_MARKER, ".config.yaml.tmp")  # what a run killed during its set-up can leave


def _leftovers_only(folder: Path) -> bool:
    """Nothing in it but what a set-up killed before config.yaml leaves (regular files): lock, marker, the
    temporary file of config.yaml. Such a folder holds nothing to lose and is adopted as empty."""
    return all(p.name in SETUP_LEFTOVERS and is_regular(p) for p in folder.iterdir())


def claim_run_dir(run_dir: Path, *, out: str | Path, resume: bool, overwrite: bool) -> RunClaim:
    """Create the run directory exclusively (with its marker), or take an existing one that visattn provably made
    (:func:`run_proof`); lock it either way.

    Nothing is written into a folder visattn did not make, and nothing is deleted here (``--overwrite`` clears the
    old run only once the new one has been set up). A symbolic link as the run directory, its lock or its marker is
    refused, never followed.
    """
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; pass one")
    if run_dir.is_symlink():
        raise ConfigError(f"run directory {run_dir} is a symbolic link; visattn does not follow it (give the folder "
                          "it points to with --out/--name, or --resume with that path)")
    if resume and not run_dir.is_dir():
        raise ConfigError(f"nothing to resume: run directory {run_dir} does not exist")
    created_out = check_out_dir(out)
    lock = DirLock(run_dir)
    try:
        run_dir.mkdir()
    except FileExistsError:
        pass
    except OSError as err:
        remove_created(created_out)
        raise ConfigError(f"cannot create run directory {run_dir}: {err}") from err
    else:
        try:
            lock.acquire()  # a process that raced us to the new folder may hold it: then the folder is theirs
            create_marker(run_dir, RUN_MARKER, made_by="visattn train")
        except BaseException:
            lock.release()
            remove_created(created_out)
            raise
        return RunClaim(run_dir, lock, created_out, created_run=True, adopted_empty=False, existing_run=False)
    try:
        if not run_dir.is_dir():
            raise ConfigError(f"run directory {run_dir} exists and is not a folder; choose another --name")
        marker_id(run_dir, RUN_MARKER)  # a marker that is a link is refused here, before anything is written
        leftovers = _leftovers_only(run_dir)
        why_not = None if leftovers else run_proof(run_dir)
        if why_not is None:
            lock.acquire()  # a live run in it is refused here, with its pid and host
        if resume:
            if why_not is not None:
                raise ConfigError(f"cannot resume {run_dir}: it was not made by visattn ({why_not}); nothing in it "
                                  "was touched")
            if not (run_dir / "config.yaml").exists():
                raise ConfigError(f"cannot resume {run_dir}: it was stopped before its set-up finished; there is "
                                  "nothing to resume (start it again with --overwrite)")
        elif why_not is not None:
            if overwrite:
                raise ConfigError(f"--overwrite refused: {run_dir} was not made by visattn ({why_not}), so it is "
                                  "not deleted and nothing is written into it; choose another --name or --out")
            raise ConfigError(f"refused: {run_dir} already exists and was not made by visattn ({why_not}), so "
                              "nothing is written into it (--overwrite would not delete it either); choose another "
                              "--name or --out")
        elif not leftovers and not overwrite:
            raise ConfigError(f"run directory {run_dir} already exists; pass --resume to continue it, "
                              "--overwrite to replace it, or --name to choose another")
    except BaseException:
        lock.release()
        remove_created(created_out)
        raise
    if leftovers:  # empty, or a set-up killed before config.yaml: adopted, with a fresh marker
        renew_marker(run_dir, RUN_MARKER, made_by="visattn train")
    return RunClaim(run_dir, lock, created_out, created_run=False, adopted_empty=leftovers,
                    existing_run=not leftovers)


# ---------------------------------------------------------------------------------------------- reading a run
def find_checkpoint(run_dir: Path, checkpoint: str) -> Path:
    """A run's ``best``/``last`` checkpoint (``checkpoints/<name>.ckpt``), or a checkpoint file given by path."""
    if checkpoint in ("best", "last"):
        path = run_dir / "checkpoints" / f"{checkpoint}.ckpt"
    else:
        path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint {path} in run {run_dir} (train it first, or pass --checkpoint PATH)")
    return path


def read_run_files(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A run's config.yaml and metrics.json ({} when it has none yet), read as files visattn wrote (no links, no
    FIFOs, bounded YAML)."""
    config = load_record(run_dir / "config.yaml")
    if config is None:
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml); runs are made by visattn train")
    try:
        metrics = json.loads(read_file(run_dir / "metrics.json"))
    except FileNotFoundError:
        metrics = {}
    except ValueError as err:
        raise ConfigError(f"{run_dir / 'metrics.json'} is not valid JSON: {err}") from None
    return config, metrics if isinstance(metrics, dict) else {}


def read_run_config(run_dir: str | Path) -> TrainConfig:
    """A run's config.yaml as the ``TrainConfig`` it was trained with: keys of older versions that no longer exist
    are dropped, and a run made before ``attn_init`` existed started every block as published ("paper")."""
    path = Path(run_dir) / CONFIG_FILE
    values = load_record(path)
    if values is None:
        raise FileNotFoundError(f"{run_dir} is not a run directory (no {CONFIG_FILE}); runs are made by visattn train")
    values = {k: v for k, v in values.items() if k in FIELDS}
    values.setdefault("attn_init", "paper")
    with held_notices():  # the run's own settings: no "default chosen" notes
        return make_config({}, values, source=str(path))


def saved_config(run_dir: Path) -> TrainConfig:
    """The config.yaml of a run to resume (:func:`read_run_config`); an invalid one says that it blocks the resume."""
    try:
        return read_run_config(run_dir)
    except ConfigError as err:
        raise ConfigError(f"cannot resume {run_dir}: its config.yaml is not valid: {err}") from err


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """A run's metrics.json (what ``visattn.training`` wrote when the run finished); ``FileNotFoundError`` before."""
    path = Path(run_dir) / METRICS_FILE
    try:
        metrics = json.loads(read_file(path))
    except ValueError as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(metrics, dict):
        raise ConfigError(f"{path} does not hold a mapping")
    return metrics


def keep_previous_logs(run_dir: Path) -> None:
    """Lightning's CSV logger starts its file anew; a resumed run keeps the earlier rows as ``metrics.partN.csv``."""
    current = run_dir / LOGS / METRICS_CSV
    if current.is_file():
        part = len(list(current.parent.glob("metrics.part*.csv")))
        os.replace(current, current.with_name(f"metrics.part{part}.csv"))


def read_metrics_csv(run_dir: str | Path) -> list[dict[str, str]]:
    """All logged rows of a run (earlier parts of a resumed run first), one row per logging call."""
    logs = Path(run_dir) / LOGS
    files = sorted(logs.glob("metrics.part*.csv"), key=lambda p: int(p.stem.split("part")[1]))
    rows: list[dict[str, str]] = []
    for path in [*files, logs / METRICS_CSV]:
        if is_regular(path):
            rows.extend(csv.DictReader(io.StringIO(read_file(path).decode("utf-8", errors="replace"), newline="")))
    return rows


# ------------------------------------------------------------------------------------------ JSON and error.json
def json_safe(value: Any) -> Any:
    """Plain JSON values; NaN and infinities become ``null`` (``NaN`` is not JSON), tensors and numpy scalars floats."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    number = float(value)  # float, numpy scalar, 0-d tensor; anything else is a bug and raises
    return number if math.isfinite(number) else None


def write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    """``payload`` as JSON (non-finite numbers as null), replacing ``path`` only once complete."""
    write_atomic(path, json.dumps(json_safe(payload), indent=2, allow_nan=False))


def write_error(run_dir: Path, err: BaseException) -> None:
    """``error.json``: why this attempt failed, for the user and the sweep; the run stays for inspection/resume."""
    last = run_dir / CHECKPOINTS / "last.ckpt"
    try:
        write_json_atomic(run_dir / ERROR_FILE, {
            "status": "failed",
            "error_type": type(err).__name__,
            "error": " ".join(str(err).split()),
            "non_finite_loss": isinstance(err, NonFiniteLossError),
            "last_checkpoint": str(last) if last.is_file() else None,
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        })
    except OSError:  # the original error matters more than this note
        pass


def read_error(run_dir: Path) -> str | None:
    """The reason error.json gives (its type and message), or None when the run has none."""
    try:
        record = json.loads(read_file(run_dir / ERROR_FILE))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        return f"unreadable {ERROR_FILE}: {err}"
    if not isinstance(record, dict) or not record.get("error"):
        return f"{ERROR_FILE} (no message)"
    kind = record.get("error_type")
    return " ".join((f"{kind}: {record['error']}" if kind else str(record["error"])).split())


def run_error(run_dir: Path) -> str | None:
    """Why a run directory does not hold a usable result, or None when it does.

    A failed attempt leaves ``error.json`` (:func:`write_error`); a finished one ``metrics.json``. An error.json
    older than metrics.json belongs to an earlier attempt that a resume has since finished. A non-finite or missing
    test value is a failure as well, so a diverged run never counts as done.
    """
    error = read_error(run_dir)
    metrics_path = run_dir / METRICS_FILE
    if not is_regular(metrics_path):
        return error or f"no {METRICS_FILE} (the run did not finish)"
    if error is not None and os.lstat(run_dir / ERROR_FILE).st_mtime_ns >= os.lstat(metrics_path).st_mtime_ns:
        return error
    try:
        metrics = read_metrics(run_dir)
    except (OSError, ConfigError) as err:
        return f"unreadable {METRICS_FILE}: {err}"
    test = metrics.get("test")
    if not isinstance(test, dict) or not test:
        return f"{METRICS_FILE} has no test metrics"
    bad = sorted(k for k, v in test.items()
                 if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v))
    if bad:
        shown = ", ".join(f"test.{k}={json.dumps(test[k])}" for k in bad)
        return f"non-finite test metric(s) {shown} in {METRICS_FILE} (the training diverged?)"
    return None


# ------------------------------------------------------------------------------------------------ finished runs
def finished_metrics(run_dir: Path) -> dict[str, Any] | None:
    """The metrics.json of a run that finished, or None: no metrics.json (or not a usable one), or an error.json
    written after it (a later attempt to train it further failed)."""
    try:
        metrics = json.loads(read_file(run_dir / "metrics.json"))
    except (OSError, ValueError):
        return None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("epochs"), int) or "test" not in metrics:
        return None
    try:
        failed_after = os.lstat(run_dir / "error.json").st_mtime_ns >= os.lstat(run_dir / "metrics.json").st_mtime_ns
    except OSError:
        failed_after = False
    return None if failed_after else metrics


class RunFinished(Exception):  # noqa: N818 - not an error: a finished run is left as it is
    """``--resume`` of a run that is finished and whose ``epochs`` was not raised: nothing is done or changed."""

    def __init__(self, run_dir: Path, metrics: dict[str, Any], asked_epochs: int) -> None:
        self.run_dir, self.metrics = run_dir, metrics
        trained, epochs = metrics.get("epochs_run", metrics["epochs"]), metrics["epochs"]
        stopped = " (stopped early)" if isinstance(trained, int) and trained < epochs else ""
        lower = f"; --epochs {asked_epochs} is below its {epochs}" if asked_epochs < epochs else ""
        super().__init__(f"{run_dir} is finished: it trained {trained} of {epochs} epoch(s){stopped} and wrote "
                         f"metrics.json{lower}. Nothing was changed. To train it further, resume it with --epochs "
                         f"above {epochs}.")


# ---------------------------------------------------------------------------------------- outputs of commands
def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(path))


def check_not_on_inputs(target: str | Path, inputs: Sequence[str | Path], *, flag: str, input_flag: str) -> None:
    """Refuse an output that is, is inside, or holds an input folder or file (compared after resolving links)."""
    out = _resolved(Path(target))
    for item in inputs:
        source = _resolved(Path(item))
        if out == source or out.is_relative_to(source) or source.is_relative_to(out):
            where = ("is" if out == source else "is inside" if out.is_relative_to(source) else "holds")
            raise ConfigError(f"{flag} {target} {where} the input {input_flag} {item}: outputs never land on "
                              "inputs, so nothing was written; choose a place outside it")


def _inside_run(folder: Path) -> bool:
    """Inside a run directory visattn made (its sub-folders are visattn's, e.g. ``<run>/figures/best``)."""
    return any(is_run_dir(parent) for parent in list(_resolved(folder).parents)[:3])


def check_output_dir(folder: str | Path, *, flag: str, inputs: Sequence[str | Path] = (),
                     input_flag: str = "--images") -> None:
    """May a command write its files into ``folder``? Yes for a folder it may create, an empty one, one holding its
    ``.visattn-output`` marker, or one inside a run directory; never one that is, holds or is inside an input, a
    link, or a folder of someone else's files. Nothing is created here (see :func:`claim_output_dir`)."""
    folder = Path(folder)
    check_not_on_inputs(folder, inputs, flag=flag, input_flag=input_flag)
    if folder.is_symlink():
        raise ConfigError(f"{flag} {folder} is a symbolic link; visattn writes only into a real folder")
    if not folder.exists():
        probe = folder.parent
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir():
            raise ConfigError(f"{flag} {folder}: {probe} is a file, not a folder")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise ConfigError(f"{flag} {folder}: no permission to write in {probe}")
        return
    if not folder.is_dir():
        raise ConfigError(f"{flag} {folder} exists and is not a folder")
    if marker_id(folder, OUTPUT_MARKER) or not any(p.name != OUTPUT_MARKER for p in folder.iterdir()):
        return
    if _inside_run(folder):
        return
    raise ConfigError(f"{flag} {folder} already holds files that visattn did not write (it has no {OUTPUT_MARKER} "
                      "marker), so none of them is overwritten; choose a new or empty folder")


def claim_output_dir(folder: str | Path, *, flag: str, made_by: str, inputs: Sequence[str | Path] = (),
                     input_flag: str = "--images") -> Path:
    """:func:`check_output_dir`, then create the folder (with parents) and make sure it holds the marker."""
    folder = Path(folder)
    check_output_dir(folder, flag=flag, inputs=inputs, input_flag=input_flag)
    folder.mkdir(parents=True, exist_ok=True)
    ident = marker_id(folder, OUTPUT_MARKER)
    if not ident:
        renew_marker(folder, OUTPUT_MARKER, made_by=made_by)
    return folder


def check_output_file(text: str | Path, *, flag: str, inputs: Sequence[str | Path] = (),
                      input_flag: str = "--images", ours: Callable[[bytes], bool]) -> Path:
    """A file a command will write: not a folder (``DIR/`` included), not an input or inside one, not a link, and,
    when it exists, a file ``ours`` recognises from its first bytes as one this command wrote."""
    raw = os.fspath(text)
    path = Path(raw)
    if path.is_dir() or raw.endswith(("/", os.sep)):
        raise ConfigError(f"{flag} {raw} is a directory; give a file name, e.g. {path / 'predictions.csv'}")
    check_not_on_inputs(path, inputs, flag=flag, input_flag=input_flag)
    if path.is_symlink():
        raise ConfigError(f"{flag} {path} is a symbolic link; it is not replaced (give the file it points to)")
    ancestor = path.parent
    while not ancestor.exists():  # the nearest existing folder must let us create the rest
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"{flag} {path}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: directory {ancestor} is not writable")
    if path.exists():
        try:
            head = read_file(path, limit=4096, head=True)
        except NotRegularFile as err:
            raise ConfigError(f"{flag}: {err}") from None
        if not ours(head):
            raise ConfigError(f"{flag} {path} exists and visattn did not write it (it is not a file this command "
                              "makes), so it is not overwritten; choose another file name")
    return path
