"""Files around a run, read and written defensively (SECURITY.md, section 6): bounded reads of regular files only,
writes that never follow a symbolic link, folder names made from values that stay inside their parent, and one
exclusive lock per run directory."""

import errno
import fcntl
import hashlib
import os
import re
import stat
from pathlib import Path
from typing import IO, BinaryIO, Callable

from locfedmix.errors import UserError

CHUNK_BYTES = 2**20
# Bytes of a folder name on Linux filesystems.
MAX_NAME_BYTES = 255
_FLAGS = {"w": os.O_TRUNC, "a": os.O_APPEND, "x": os.O_EXCL}
# Separators and control characters cannot be part of a folder made from a value.
_UNSAFE_IN_NAME = re.compile(r"[/\\\x00-\x1f\x7f]")


def reason(err: OSError) -> str:
    """The operating system's cause in words; ELOOP from O_NOFOLLOW means the path is a symbolic link."""
    if err.errno == errno.ELOOP:
        return "it is a symbolic link, which locfedmix never writes through"
    return err.strerror or type(err).__name__


def _kind(mode: int) -> str:
    kinds = {stat.S_ISDIR: "a directory", stat.S_ISFIFO: "a FIFO", stat.S_ISCHR: "a character device",
             stat.S_ISBLK: "a block device", stat.S_ISSOCK: "a socket"}
    return next((name for test, name in kinds.items() if test(mode)), "not a regular file")


def open_regular(path: Path, what: str, error: type[UserError] = UserError) -> BinaryIO:
    """`path` opened for reading if it is a regular file. It is opened without blocking, so a FIFO with no writer
    cannot hang the program, and checked on the open descriptor, so no swap between a check and the open is seen."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise error(f"{what} '{path}' cannot be read: {reason(err)}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise error(f"{what} '{path}' is {_kind(mode)}; only a regular file is read")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_bounded(path: Path, limit: int, what: str, error: type[UserError] = UserError,
                 too_large: str = "{what} '{path}' is {size} bytes; at most {limit} are read") -> bytes:
    """The whole of a regular file of at most `limit` bytes, counted on what is read (a file growing after a stat, or
    a device, cannot make it read more), in chunks so that memory follows the bytes really there. `too_large` is the
    refusal's wording."""
    chunks, total = [], 0
    with open_regular(path, what, error) as f:
        try:
            while chunk := f.read(min(CHUNK_BYTES, limit + 1 - total)):
                chunks.append(chunk)
                total += len(chunk)
                if total > limit:  # the size on disk only words the message; the bound is what was read
                    size = max(total, os.fstat(f.fileno()).st_size)
                    raise error(too_large.format(what=what, path=path, size=size, limit=limit))
        except OSError as err:
            raise error(f"{what} '{path}' cannot be read: {reason(err)}") from None
    return b"".join(chunks)


def sha256_of(path: Path, what: str, error: type[UserError] = UserError) -> str:
    """The SHA-256 of a regular file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open_regular(path, what, error) as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def open_write(path: Path, mode: str) -> IO:
    """`path` opened for writing without following a symbolic link (O_NOFOLLOW): 'w' truncates, 'a' appends, 'x'
    creates a new file; add 'b' for bytes. Text is UTF-8 with newlines as written (csv wants that)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | _FLAGS[mode[0]]
    fd = os.open(path, flags, 0o644)
    return os.fdopen(fd, mode.replace("x", "w"), **({} if "b" in mode else {"encoding": "utf-8", "newline": ""}))


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Replace `path` in one step: `write` fills a new temporary file (never a link), which is synced and renamed over
    `path`; a crash or a full disk leaves the previous `path` as it was."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)  # a killed run's leftover; unlink removes a link itself, never its target
    try:
        with open_write(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def folder_name(value: str, what: str) -> str:
    """A value (a sweep cell's label) as one folder name: separators and control characters become '_', and '.' or
    '..' alone become underscores, so that the folder is always a child of its parent."""
    name = _UNSAFE_IN_NAME.sub("_", value)
    if not name.strip("."):
        name = name.replace(".", "_") or "_"
    if len(name.encode()) > MAX_NAME_BYTES:
        raise UserError(f"{what} '{value[:40]}…' is longer than a folder name may be ({MAX_NAME_BYTES} bytes)")
    return name


class RunLock:
    """An exclusive flock on `run.lock` in a run directory for the life of a run. The holder's pid is written into
    the file, so that a second process can name it; the kernel releases the lock when the holder dies."""

    NAME = "run.lock"

    def __init__(self, directory: Path):
        path = directory / self.NAME
        try:
            self.fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise UserError(f"cannot open the lock file '{path}': {reason(err)}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            self.release()
            raise UserError(f"run directory '{directory}' is in use by another locfedmix process (pid {holder}); "
                            "wait for it to end, or choose another --out") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
