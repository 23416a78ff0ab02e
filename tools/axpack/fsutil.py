"""Atomic writes, checksums and small file helpers shared by every step.

Every output is written to a temporary sibling and renamed into place
(``os.replace`` is atomic on POSIX within one filesystem), so a killed process
never leaves a file that passes for finished.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Self


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def new_tmp(path: Path) -> tuple[int, str]:
    """A hidden temp sibling of ``path`` for an atomic write: ``mkstemp`` in
    ``path``'s folder named ``.NAME.XXXX.tmp``, with normal file permissions
    (0666 & ~umask). Returns ``(fd, temp path)``; the caller renames or
    removes it.

    Raises:
        OSError: the folder is missing or not writable.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())
    return fd, tmp


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename).

    Returns the final path. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = new_tmp(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON (stable bytes across reruns)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temp sibling of ``path`` for streaming writes; rename on success.

    On any exception the temp file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = new_tmp(path)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder beside ``path``; on success it replaces ``path``.

    A previous ``path`` is removed only after the new one is complete, so a
    killed run leaves either the old folder or none, never a partial one
    under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def remove_stale_temps(folder: Path, name: str, pattern: bool = False) -> list[Path]:
    """Remove the temps a killed writer of ``folder/name`` left behind: the
    hidden siblings :func:`new_tmp` and :func:`atomic_dir` name
    ``.NAME.XXXX.tmp`` (files or folders). ``pattern``: ``name`` is a glob
    (e.g. ``run-*.gguf``: every GGUF of a run). Returns what was removed, sorted.
    Never call it while another process writes ``name``.
    """
    stale = sorted(Path(folder).glob(f".{name if pattern else glob.escape(name)}.*.tmp"))
    for p in stale:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
    return stale


class OutputSet:
    """The files of one output folder, written as a set and committed together.

    Each file is streamed into a hidden temp sibling (``.NAME.XXXX.tmp``,
    :func:`new_tmp`'s naming, so a killed run's leftovers never pass for output). A
    folder holding its ``marker`` file (summary.json) is finished.
    :meth:`commit`, once every byte is written and fsynced:

    1. removes the old marker: from here on the folder is not finished;
    2. removes every other old file in ``owned`` (outputs of an earlier run
       this run does not write too, e.g. a stale ``sft.val.jsonl``, and the
       ones it rewrites), so no old file can sit beside a new one;
    3. renames the new files into place, the marker last, and fsyncs the folder.

    A crash at any point therefore leaves either the finished old set, or
    files of one run (old or new, never both) and no marker. A rename
    cannot run out of disk space: everything that needs space happened
    before step 1. Use as a context manager: leaving it by an exception
    removes the temps; the hidden temps a SIGKILL leaves are removed when
    the next set is opened on the folder (two runs writing one folder at
    the same time are not supported).

    Args:
        folder: the output folder (must exist).
        owned: file names (besides ``marker``) this command owns in ``folder``.
        marker: the file whose presence means "finished"; written by commit.

    Raises:
        OSError: an owned name is a directory (EISDIR, before any work), or
            any I/O error (the caller turns it into one line).
    """

    def __init__(
        self, folder: Path, owned: tuple[str, ...], marker: str = "summary.json"
    ) -> None:
        self.folder = folder
        self.owned = owned
        self.marker = marker
        self._tmp: dict[str, str] = {}  # final name -> temp path, in open order
        self._fh: dict[str, BinaryIO] = {}
        for name in (*owned, marker):
            path = folder / name
            if path.is_dir():  # fail before the work, not after it
                raise IsADirectoryError(
                    errno.EISDIR, os.strerror(errno.EISDIR), str(path)
                )
            remove_stale_temps(folder, name)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self._discard()

    def open(self, name: str) -> BinaryIO:
        """A binary file to stream ``name``'s bytes into (a hidden temp)."""
        fd, tmp = new_tmp(self.folder / name)
        self._tmp[name] = tmp
        self._fh[name] = fh = os.fdopen(fd, "wb")
        return fh

    def _discard(self) -> None:
        for fh in self._fh.values():
            with contextlib.suppress(OSError):
                fh.close()
        for tmp in self._tmp.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self._tmp.clear()
        self._fh.clear()

    def commit(self, marker_data: bytes) -> None:
        """Write the marker's bytes, then swap the whole set in (class docstring)."""
        self.open(self.marker).write(marker_data)
        for fh in self._fh.values():
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
        final = self.folder / self.marker
        final.unlink(missing_ok=True)  # 1. not finished from here on
        for name in self.owned:  # 2. no old file beside a new one
            (self.folder / name).unlink(missing_ok=True)
        for name in [n for n in self._tmp if n != self.marker]:  # 3. the new set,
            os.replace(self._tmp[name], self.folder / name)
            del self._tmp[name]  # (renamed: no longer a temp to remove)
        os.replace(self._tmp[self.marker], final)  # the marker last
        del self._tmp[self.marker]
        self._fh.clear()
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def require_safetensors(model_dir: str | os.PathLike) -> None:
    """Refuse a HF model folder whose weights are not safetensors, before anything loads it.

    The rule is the pinned converter's (``model*.safetensors`` or the shards a
    ``model.safetensors.index.json`` names), which is also what transformers loads
    first; otherwise both fall back to ``pytorch_model*.bin`` pickles, which can run
    code when loaded. One rule for convert, verify and probe.

    Raises:
        AxpackError: no safetensors weights in ``model_dir`` (names the .bin files it has).
    """
    from .errors import AxpackError

    folder = Path(model_dir)
    if any(folder.glob("model*.safetensors")) or (folder / "model.safetensors.index.json").is_file():
        return
    pickled = sorted(p.name for p in folder.glob("*.bin"))
    has = f" (it has {', '.join(pickled[:3])})" if pickled else ""
    raise AxpackError(f"{folder}: no *.safetensors weights{has}; axpack reads only safetensors (a pickled .bin "
                      "can run code when loaded): re-save the model with save_pretrained(..., "
                      "safe_serialization=True) or merge it with axpack merge")
