"""Writing a file whole or not at all."""

import os
import tempfile
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path


def write_atomic(path: Path, parts: Iterable[str]) -> None:
    """Write `parts` as UTF-8 text into a new temporary file beside `path`, then rename it over `path`: readers never
    see half a file. mkstemp makes the temporary file under a name nobody can guess, and fails rather than follow a
    link someone planted there; the rename replaces a link at `path` rather than writing through it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for part in parts:
                f.write(part)
            f.flush()
            os.fchmod(f.fileno(), _new_file_mode())  # mkstemp's 0600 would hide an export from its other readers
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _new_file_mode() -> int:
    """The mode `open()` gives a new file: 0666 less the process's umask."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic_text(path: Path, text: str) -> None:
    """Write a whole file or nothing: a half-written report is worse than none."""
    write_atomic(path, [text])
