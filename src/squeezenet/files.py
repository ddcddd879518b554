"""Files: atomic writes, the cache directory, and the crash points the resume tests kill at.

Every artifact is written to a temporary file beside its destination, fsynced and renamed over
it, so a crash, a full disk or a signal never leaves a half-written file that a resume or an
``eval`` would read, and the previous version stays byte-identical until the rename.
"""

from __future__ import annotations

import errno
import os
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import SqueezeNetError

TMP_SUFFIX = ".squeezenet-tmp"  # only files named like this are ours to clean up
# Errors whose cause is the machine, not the program: reported in one line, never as a traceback.
DISK_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
               errno.EACCES: "permission denied", errno.EPERM: "permission denied",
               errno.EROFS: "the file system is read-only", errno.ENOTDIR: "a parent path is a file",
               errno.EEXIST: "a parent path is a file", errno.EISDIR: "it is a directory"}


def crash_point(name: str) -> None:
    """Test hooks proving crash and signal safety: ``SQUEEZENET_KILL_AT=NAME`` SIGKILLs this
    process when it reaches the point NAME (e.g. ``epoch2-step3``, ``before-rename:last.state.pt``);
    ``SQUEEZENET_SIGNAL_AT=NAME[@RANK]`` sends it SIGTERM there (under torchrun: on that rank)."""
    if os.environ.get("SQUEEZENET_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
    at = os.environ.get("SQUEEZENET_SIGNAL_AT", "")
    if at and at.split("@")[0] == name and ("@" not in at or at.split("@")[1] == os.environ.get("RANK", "0")):
        os.kill(os.getpid(), signal.SIGTERM)


def cache_dir() -> Path:
    """Decoded data sets and exported models: ``$SQUEEZENET_CACHE``, else ``~/.cache/squeezenet``."""
    return Path(os.environ.get("SQUEEZENET_CACHE", Path.home() / ".cache" / "squeezenet"))


def disk_error(path: str | Path, e: OSError) -> SqueezeNetError:
    """One clear line for an OSError while writing ``path``."""
    cause = DISK_ERRORS.get(e.errno, e.strerror or type(e).__name__)
    return SqueezeNetError(f"cannot write {path}: {cause} ({e.strerror or e}); nothing was changed there. "
                           f"Free some space or choose another location, then run the command again")


def mkdir(path: str | Path) -> Path:
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise disk_error(path, e) from None
    return path


@contextmanager
def atomic_path(path: str | Path, mode: int = 0o666):
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    The file gets ``mode`` minus the umask (``mkstemp`` would leave it 0600). On any error the
    temporary file is removed and ``path`` is untouched; disk errors become a SqueezeNetError."""
    path = Path(path)
    mkdir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as e:
        raise disk_error(path, e) from None
    os.close(fd)
    try:
        try:
            yield Path(tmp)
            os.chmod(tmp, mode & ~_umask())
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            crash_point(f"before-rename:{path.name}")
            os.replace(tmp, path)
            _fsync_dir(path.parent)  # make the rename itself durable
        except Exception as e:
            cause = _disk_cause(e, path.parent)
            if cause is not None:
                raise disk_error(path, cause) from None
            raise
        crash_point(f"after-rename:{path.name}")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    """The process's umask (reading it means setting it; put straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _disk_cause(e: Exception, folder: Path) -> OSError | None:
    """The disk error behind ``e``: an OSError itself, or one that a library reported in words
    (safetensors: "os error 28"; torch.save: "file write failed" on a full disk)."""
    if isinstance(e, OSError):
        return e if e.errno in DISK_ERRORS else None
    text = str(e)
    for code, words in ((errno.ENOSPC, ("No space left", "os error 28")),
                        (errno.EDQUOT, ("quota exceeded", "os error 122"))):
        if any(w in text for w in words):
            return OSError(code, os.strerror(code))
    try:
        st = os.statvfs(folder)
        if "write failed" in text and st.f_bavail * st.f_frsize < 1 << 20:
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError:
        pass
    return None


def _fsync_dir(path: Path) -> None:
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def replace_folder(tmp: Path, out: Path) -> None:
    """A folder made beside ``out`` (``tmp``) takes its place: readable by all, the old one (a
    page or an export this program wrote) moved aside and removed only once the new one is in."""
    import shutil

    for p in tmp.rglob("*"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    os.chmod(tmp, 0o755)
    old = out.with_name(f".{out.name}.old.squeezenet-tmp")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Temporary files a killed writer of ours left in ``folder`` (never another program's)."""
    stale = [p for p in folder.glob(f".*{TMP_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
