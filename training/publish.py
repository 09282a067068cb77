"""Making a model folder appear complete or not at all: write it under a hidden name, then rename it.

A rename within one filesystem is atomic, so a service polling the model folder (or a person listing it)
never sees half a SavedModel; and rename(2) never replaces a directory that holds anything, so publishing
a version can never overwrite or change one that exists.
"""

import errno
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.contract import next_version

STAGING_PREFIX = ".staging-"  # version_dirs() ignores it: only integer names are versions
DEFAULT_MODEL_ROOT = Path("models/cifar10")  # the served model folder, as the service's MODEL_DIR defaults to
RUN_EXPORT_DIR = "model"  # a training run without --out exports here, inside its run folder


@contextmanager
def staging_dir(parent: Path) -> Iterator[Path]:
    """A new hidden directory in ``parent`` (created) to write into; removed on exit unless it was
    renamed away by :func:`publish_next_version` or :func:`publish_replacing`."""
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a served model must be readable by the service's user
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish_next_version(staging: Path, model_root: Path) -> Path:
    """Rename ``staging`` to ``model_root/<next integer version>`` and return that path.

    If another publisher takes the number first, the rename fails on its non-empty folder and the next
    number is tried: an existing version is never touched."""
    for _ in range(100):
        version_dir = model_root / str(next_version(model_root))
        try:
            staging.rename(version_dir)
        except OSError as error:
            if error.errno in (errno.ENOTEMPTY, errno.EEXIST):
                continue
            raise
        return version_dir
    raise RuntimeError(f"could not find a free version number in {model_root}")


def publish_replacing(staging: Path, target: Path) -> Path:
    """Rename ``staging`` to ``target``, first moving an older ``target`` aside (a run folder's export,
    written again when a finished run is resumed). Not for served versions: those are never replaced."""
    if target.exists():
        old = target.with_name(f"{STAGING_PREFIX}old-{target.name}")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        shutil.rmtree(old)
    staging.rename(target)
    return target
