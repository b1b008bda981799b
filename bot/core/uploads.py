"""A file a person sent, on its way into the core: fetched into a folder of its own (two uploads of one file never
share a path), given to `StartRun` or `ImportData` as its upload, and removed once the core imported it or refused
it (the dataset version holds the samples; nothing of the person's file stays behind)."""

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bot.core.actions import ImportData, StartRun


@contextmanager
def upload_folder(uploads: Path) -> Iterator[Path]:
    """A new folder under `uploads` for one file, removed with whatever is in it afterwards."""
    uploads.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=uploads))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def with_upload(action: StartRun | ImportData, path: Path, name: str | None) -> StartRun | ImportData:
    """`action` (a run to start, data to import) on the file at `path`, which the person called `name`."""
    return action.model_copy(update={"upload": str(path), "upload_name": name or path.name})
