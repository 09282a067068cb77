"""Following the model folder: a higher version is loaded, checked and warmed in the background, then swapped in.

:class:`ServedModel` holds the model answering now. The batcher reads it once per batch and runs the whole
batch on that object, so a batch already handed to the old model finishes there while every later batch
goes to the new one, and each answer names the version that computed it. :class:`ModelWatcher` polls the
folder every ``MODEL_POLL_SECONDS`` for a complete version above the served one; it loads it on its own
thread (the inference thread keeps serving), checks the export contract, runs it on the warm-up batches
(which also shows a model that loads but answers nonsense), and only then swaps. A version that fails is
logged once with the reason, counted, and skipped until its files change; the served model stays.
"""

import asyncio
import gc
import logging
import os
import time
import weakref
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from app.metrics import Metrics
from core.contract import METADATA_FILE, missing_files, version_dirs
from core.level_table import MODEL_LEVELS, LevelSettings
from core.runtime import DEFAULT_OPTIONS, RuntimeOptions
from core.versions import (
    LoadedModel,
    ModelLoadError,
    as_load_error,
    check_answers,
    load_model,
    load_version,
    resolve_version_dir,
    unreadable,
)

logger = logging.getLogger("app.model_watcher")

# A version folder counts as written once nothing in it has changed for this long, so a folder copied
# in place file by file (`cp -r`) is not read half-copied. A folder renamed into place (what
# `python -m training promote` does, and docs/deployment.md asks of operators) is complete anyway.
SETTLE_S = 1.0

Fingerprint = tuple[tuple[str, int, int, int], ...]


class ServedModel:
    """The model answering requests now, and how many times it was replaced."""

    def __init__(self, model: LoadedModel) -> None:
        self._model = model
        self.swaps = 0

    @property
    def current(self) -> LoadedModel:
        return self._model

    def swap(self, model: LoadedModel) -> LoadedModel:
        """Serve ``model`` from the next batch on; returns the model it replaced."""
        old, self._model = self._model, model
        self.swaps += 1
        return old


def fingerprint(version_dir: Path) -> Fingerprint | None:
    """Name, size, modification and change time of everything in ``version_dir``; None if it changed while
    being read. A version skipped for a fault is tried again only once this changes (it was fixed)."""
    try:
        paths = sorted([version_dir, *version_dir.rglob("*")])
        return tuple((str(path.relative_to(version_dir)), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
                     for path, stat in ((path, entry_stat(path)) for path in paths))
    except OSError:
        return None


def entry_stat(path: Path) -> os.stat_result:
    """What a path points to, or a link's own entry when it points nowhere: a dangling link left the version
    unfingerprinted, and so never loaded and never reported."""
    try:
        return path.stat()
    except FileNotFoundError:
        return path.lstat()  # still raises for a file removed since it was listed (the version is changing)


def seconds_since_last_change(files: Fingerprint) -> float:
    newest_ns = max(max(mtime, ctime) for _, _, mtime, ctime in files)
    return time.time() - newest_ns / 1e9


class ModelWatcher:
    """Serves the highest good version of ``model_root`` and follows the folder (see the module's docstring)."""

    served: ServedModel

    def __init__(self, model_root: Path, poll_s: float, warm_up_sizes: Iterable[int], metrics: Metrics,
                 options: RuntimeOptions = DEFAULT_OPTIONS, level_settings: LevelSettings = MODEL_LEVELS) -> None:
        self.model_root = model_root
        self.options = options
        self.level_settings = level_settings
        self.poll_s = poll_s
        self.warm_up_sizes = tuple(warm_up_sizes)
        self.metrics = metrics
        self._skipped: dict[int, Fingerprint] = {}  # version -> the files it failed with
        self._unlogged: list[tuple[int, ModelLoadError]] = []  # skipped at start-up, logged once serving
        self._retired: list[weakref.ref] = []  # replaced models, until their memory is gone
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader")

    def load_first(self) -> ServedModel:
        """At start-up: the highest version that loads and answers, skipping (and reporting) broken ones above it.

        When none loads, the highest version's error is raised alone, so a broken model still stops the
        process with one line naming it."""
        failed: list[tuple[int, Path, ModelLoadError]] = []
        for version, path in reversed(version_dirs(self.model_root)):
            try:
                model = load_version(path, version, self.options, self.level_settings)
                # One image per level (milliseconds): a version that loads but answers nonsense is passed over
                # too, rather than served and never ready. The full warm-up runs once the server is up.
                check_answers(model, [1])
            except Exception as error:  # whatever a broken version raises: fall back past it
                failed.append((version, path, as_load_error(path, error)))
                continue
            self.served = ServedModel(model)
            self.metrics.model_version.set(version)
            for skipped_version, skipped_path, error in failed:
                self.skip(skipped_version, skipped_path, fingerprint(skipped_path), error, log=False)
                self._unlogged.append((skipped_version, error))
            return self.served
        raise failed[0][2] if failed else ModelLoadError(f"{self.model_root} has no version folders", "missing")

    def skip(self, version: int, path: Path, files: Fingerprint | None, error: ModelLoadError,
             log: bool = True) -> None:
        """Log a version's fault once and remember it, so it is not loaded again until its files change."""
        if files is not None:
            self._skipped[version] = files
        self.metrics.model_versions_rejected.labels(error.reason).inc()
        if log:
            self._log_skip(version, error)

    def _log_skip(self, version: int, error: ModelLoadError) -> None:
        logger.warning("skipped model version %d (%s): %s; still serving version %d", version, error.reason, error,
                       self.served.current.version)

    def log_skipped_at_start(self) -> None:
        """The versions load_first skipped, logged once the server runs, after the lines that say what is served."""
        for version, error in self._unlogged:
            self._log_skip(version, error)
        self._unlogged.clear()

    async def run(self) -> None:
        """Poll until cancelled (at shutdown); at once if polling is off (MODEL_POLL_SECONDS=0)."""
        if self.poll_s <= 0:
            return
        try:
            while True:
                try:
                    delay = await self.poll()
                except OSError as error:  # the folder or its volume went away: keep serving, look again later
                    logger.warning("could not look for model versions in %s: %s", self.model_root, error)
                    delay = self.poll_s
                await asyncio.sleep(delay)
        finally:
            self._loader.shutdown(wait=False, cancel_futures=True)

    async def poll(self) -> float:
        """One look at the folder; swaps in a newer version if one is ready. Returns seconds to the next look."""
        self._release_retired()
        for version, path in reversed(version_dirs(self.model_root)):
            if version <= self.served.current.version:
                break
            files = fingerprint(path)
            if files is None or self._skipped.get(version) == files:
                continue
            unchanged_for = seconds_since_last_change(files)
            if unchanged_for < SETTLE_S:  # still being written: look again as soon as it may be done
                return min(self.poll_s, SETTLE_S - unchanged_for + 0.05)
            try:
                missing = missing_files(path)
            except OSError as error:  # a version the service may not read: skip it, look at the ones below
                self.skip(version, path, files, unreadable(path, error))
                continue
            if missing:
                self.skip(version, path, files, ModelLoadError(
                    f"{path} is incomplete: no {', '.join(missing)}", reason="incomplete"))
                continue
            if await self._try_swap(version, path, files):
                break
        return self.poll_s

    async def _try_swap(self, version: int, path: Path, files: Fingerprint) -> bool:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            model = await loop.run_in_executor(self._loader, self._load_checked, version, path)
        except Exception as error:  # whatever a broken model raises: skip it
            self.skip(version, path, files, as_load_error(path, error))
            return False
        old = self.served.swap(model)
        self.metrics.model_swaps.inc()
        self.metrics.model_version.set(version)
        logger.info("now serving model %s version %d from %s (was version %d): loaded, checked and warmed "
                    "in %.1f s", model.name, version, path, old.version, time.perf_counter() - started)
        self._retired.append(weakref.ref(old))
        del old
        self._release_retired()
        return True

    def _load_checked(self, version: int, path: Path) -> LoadedModel:
        model = load_version(path, version, self.options, self.level_settings)
        served = self.served.current.name
        if model.name != served:  # the protocol routes and their readiness probes address the model by name
            raise ModelLoadError(f"{path / METADATA_FILE} names the model {model.name!r}, but this server serves "
                                 f"{served!r}, the name /v1 and /v2 clients and probes use. Keep the name, or serve "
                                 "the new model from a MODEL_DIR of its own.", reason="contract")
        check_answers(model, self.warm_up_sizes)
        return model

    def _release_retired(self) -> None:
        """Collect replaced models as soon as no batch uses them: a reference cycle would otherwise keep a
        compiled model's memory until the next collection."""
        if not self._retired:
            return
        gc.collect()
        self._retired = [ref for ref in self._retired if ref() is not None]


def start_serving(model_dir: Path, pinned_version: int | None, poll_s: float, warm_up_sizes: Iterable[int],
                  metrics: Metrics, options: RuntimeOptions = DEFAULT_OPTIONS,
                  level_settings: LevelSettings = MODEL_LEVELS) -> tuple[ServedModel, ModelWatcher | None]:
    """The model to serve first, and the watcher that follows ``model_dir`` (None when nothing may swap:
    MODEL_VERSION pins one, or MODEL_DIR names a version folder itself; its run() returns at once when
    polling is off)."""
    pinned = pinned_version is not None or resolve_version_dir(model_dir)[1] == model_dir
    if pinned:
        served = ServedModel(load_model(model_dir, pinned_version, options, level_settings))
        metrics.model_version.set(served.current.version)
        return served, None
    watcher = ModelWatcher(model_dir, poll_s, warm_up_sizes, metrics, options, level_settings)
    return watcher.load_first(), watcher
