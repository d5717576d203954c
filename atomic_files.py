"""Files that appear whole or not at all: the project's one atomic writer.

Everything the project writes goes through here: checkpoints, results, the
image-feature cache (trainers/), split files and few-shot draws (datasets/).
This is a top-level leaf module (it imports nothing of the project) so that
datasets/ can use it without importing trainers/; ``trainers.run.atomic`` is the
same functions under the name trainers/ and scripts/ import them by.

A run can be killed at any instant (preemption, ``timeout``, out of memory).
Writing a file in place can then leave it empty or truncated, and a resumed run
or ``scripts/results.py`` would read garbage. ``atomic_write`` writes a
temporary file in the same folder, flushes it to disk, then renames it over the
target: a rename within one file system is atomic, so readers see the old file
or the new one, never a mixture. The file gets the mode ``open()`` would give
(0666 less the umask; mkstemp alone makes it 0600, unreadable to the group of a
shared ``$DATA`` or cache), and the folder is fsynced after the rename, so the
rename itself survives a crash.

Fault injection (for the tests that kill real runs): with
``SOFTCPT_KILL_WRITE="<file name>:<n>:<stage>"`` the process SIGKILLs itself at
the n-th write of a file with that base name, at ``stage`` ``partial`` (half the
bytes are in the temporary file) or ``unrenamed`` (the temporary file is
complete, the rename has not happened). Unset, it costs one dict lookup.
"""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
from typing import BinaryIO, Callable, Union

KILL_ENV = "SOFTCPT_KILL_WRITE"
TEMP_SUFFIX = ".tmp"
_writes: dict[str, int] = {}  # base name -> writes so far (fault injection only)


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (/proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)  # elsewhere: set and restore (a brief window for other threads)
    os.umask(umask)
    return umask


def file_mode() -> int:
    """What ``open(path, "w")`` would give now: 0666 less the umask."""
    return 0o666 & ~_umask()


# A run's log (trainers/run/logs.py tees stdout into it). Here, in a leaf, so that train.py can
# record a config error there before torch is imported.
LOG_NAME = "log.txt"


def append_to_log(output_dir: str, text: str) -> None:
    """Add ``text`` to ``<output_dir>/log.txt`` without a tee (errors before the run starts).
    One short write in append mode: it lands whole after what is there."""
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, LOG_NAME), "a") as f:
            f.write(text if text.endswith("\n") else text + "\n")


def atomic_write(path: str, data: Union[bytes, str]) -> None:
    """Replace ``path`` by ``data`` so that it is never seen half written."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    _replace_with(path, lambda f: f.write(data))


def atomic_torch_save(obj, path: str) -> None:
    """``torch.save`` through a temporary file and a rename, streamed (no copy in memory)."""
    import torch

    atomic_write_stream(path, lambda f: torch.save(obj, f))


def atomic_write_stream(path: str, write: Callable[[BinaryIO], object]) -> None:
    """Replace ``path`` by what ``write(f)`` writes into a binary file (large pickles:
    streamed, no copy in memory)."""
    _replace_with(path, write)


def _replace_with(path: str, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write`` on a temporary file next to ``path``, make it durable, rename it over."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=TEMP_SUFFIX, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            kill_at = _kill_stage(path)
            if kill_at == "partial":
                f.flush()
                f.truncate(f.tell() // 2)
                _die(f)
            f.flush()
            os.fsync(f.fileno())
            if kill_at == "unrenamed":
                _die(f)
        os.chmod(tmp, file_mode())  # read at each write: the umask may change
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_folder(folder)


def atomic_folder(dest: str, fill: Callable[[str], object]) -> bool:
    """Create the folder ``dest`` whole or not at all: ``fill(tmp)`` writes into a temporary
    folder next to it, which is then renamed to ``dest``.

    The folder gets the umask's mode (mkdtemp makes it 0700) and the parent is
    fsynced after the rename. Returns False, leaving ``dest`` as it is, when
    another process created ``dest`` first (content written by deterministic
    code, so theirs is as good); raises any other failure.
    """
    parent = os.path.dirname(os.path.abspath(dest))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(dest)}.")
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        fill(tmp)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if os.path.isdir(dest):  # another process renamed its folder there first
            return False
        raise
    _fsync_folder(parent)
    return True


def remove_stale_temps(folder: str) -> list[str]:
    """Delete temporary files a killed run left in ``folder``; returns their paths."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in os.listdir(folder):
        if name.startswith(".") and name.endswith(TEMP_SUFFIX):
            path = os.path.join(folder, name)
            try:
                os.unlink(path)
                removed.append(path)
            except OSError:
                pass
    return removed


def _fsync_folder(folder: str) -> None:
    """Make the rename itself durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _kill_stage(path: str) -> str:
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return ""
    name, count, stage = spec.rsplit(":", 2)
    base = os.path.basename(path)
    if base != name:
        return ""
    _writes[base] = _writes.get(base, 0) + 1
    return stage if _writes[base] == int(count) else ""


def _die(f) -> None:
    f.flush()
    os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)
