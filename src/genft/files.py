"""File helpers shared by every module that writes results: atomic writes, content hashes, JSON, time stamps."""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import IO, Any

# atomic_write's temporary files: "." + the target's name + "." + tempfile's random characters + ".tmp"
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]+\.tmp$")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same folder and os.replace: never a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make results unreadable to other users
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def temp_target(name: str) -> str | None:
    """The file an atomic_write temporary file of this name was for, or None when the name is not one."""
    m = _TEMP_NAME.match(name)
    return m.group("target") if m else None


class Busy(RuntimeError):
    """A lock held by another process; the message is what the holder wrote into the lock file."""


def hold_lock(path: Path) -> IO[str]:
    """An exclusive flock on `path` (created if needed), held until the returned file is closed (the OS
    releases it even after kill -9); the holder's pid, host and start time are written into it.  Busy when
    another process holds it; any other failure (a filesystem without locks, no permission)
    is the OSError itself, never mistaken for a busy lock."""
    path = Path(path)
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        f.seek(0)
        holder = f.read().strip() if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN) else ""
        f.close()
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise Busy(holder or "holder unknown") from None
        raise OSError(e.errno, f"cannot lock {path}: {e.strerror} (does this filesystem support flock?)") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()} since {now_utc()}\n")
    f.flush()
    return f


@contextlib.contextmanager
def folder_lock(folder: Path):
    """An exclusive flock on a folder itself, waited for and held for the `with` block: writers of one folder
    take turns, and no lock file is left behind in it."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # (closing releases the flock)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_SHA_CACHE: dict[tuple, str] = {}


def file_key(path: Path) -> tuple[str, int, int]:
    """(resolved path, size, mtime): what a per-process cache of a file's content is keyed on, so that a file
    rewritten since is read again.  OSError when the file is not there."""
    path = Path(path)
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def sha256_cached(path: Path) -> str:
    """sha256_file, remembered for this process by file_key: planning hashes the same files often."""
    key = file_key(path)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(path)
    return _SHA_CACHE[key]


def sha256_json(obj: Any) -> str:
    """The sha256 of an object's canonical JSON (sorted keys): the one way genft hashes settings."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def write_json(path: Path, obj: Any, indent: int = 1) -> None:
    """JSON through atomic_write (never a partial file)."""
    atomic_write(path, (json.dumps(obj, indent=indent, default=str, ensure_ascii=False) + "\n").encode("utf-8"))


def read_json(path: Path) -> Any:
    """A JSON file's content; raises OSError (missing, unreadable) or ValueError (not JSON: line and column)."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None


def read_json_or_none(path: Path) -> Any:
    """A JSON file's content, or None when it is missing or not JSON (for optional state files only)."""
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def now_utc() -> str:
    """The time stamp of every record: UTC, ISO 8601, seconds."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def fmt_duration(s: float) -> str:
    """A duration for people: '42 s', '3 min 05 s', '17 min', '2 h 05 min'."""
    s = max(0, int(round(s)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s" if s < 600 else f"{round(s / 60)} min"
    return f"{s // 3600} h {round(s % 3600 / 60):02d} min"


def describe_os_error(e: OSError) -> str:
    """An OSError as one line: the file, what happened, and for the usual causes what to do."""
    what = e.strerror or str(e)
    where = ": ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    hint = {errno.ENOSPC: "free some space (nothing partial was kept: every file genft writes is atomic)",
            errno.EDQUOT: "free some space or raise the quota", errno.EROFS: "the filesystem is read-only: write "
            "elsewhere (--data-dir, --out-dir, the suite's output)", errno.EACCES: "no permission: write elsewhere "
            "or fix the folder's permissions", errno.EPERM: "not permitted: write elsewhere"}.get(e.errno, "")
    return f"{where + ': ' if where else ''}{what}{'; ' + hint if hint else ''}"
