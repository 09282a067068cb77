"""The FastAPI application: ``uvicorn app.main:app``.

Startup loads the SavedModel in the lifespan (a bad model stops the process with one line),
then warms it up in the background: /livez answers at once, /readyz turns 200 when warm, and 503
again from SIGTERM on, through the shutdown grace (app/shutdown.py).
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app import __version__
from app.access import ApiKeyMiddleware, ApiKeys
from app.api_docs import router as docs_router
from app.batching import MicroBatcher
from app.errors import install_error_handlers
from app.logs import page_urls, seconds_since_start
from app.metrics import Metrics, serve_metrics
from app.middleware import BodyLimitMiddleware, MetricsMiddleware, OneLineStartupErrors, SecurityHeadersMiddleware
from app.model_watcher import ModelWatcher, start_serving
from app.open_inference_routes import router as open_inference_router
from app.openapi import install_openapi, operation_id
from app.pages import router as pages_router
from app.protocol_docs import REQUEST_MODELS
from app.routes import metrics_router, predict_router, router
from app.service import ClassifierService, warm_up_sizes
from app.settings import Settings, get_settings
from app.shutdown import hold_sigterm
from app.tfserving_routes import router as tfserving_router
from app.uploads import upload_schemas
from core.level_table import LevelTable
from core.versions import ModelLoadError

logger = logging.getLogger("app")

DESCRIPTION = """Classifies images into the ten CIFAR-10 classes (airplane, automobile, bird, cat, deer,
dog, frog, horse, ship, truck). Upload an image to **POST /predict**: it is decoded, centre-cropped
to a square, resized to 32x32 and answered with the ten softmax probabilities."""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    metrics = Metrics()
    api_keys = ApiKeys(settings.api_keys_file)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        api_keys.load()  # a bad key file stops the start before the slow model load
        served, watcher = start_serving(settings.model_dir, settings.model_version, settings.model_poll_seconds,
                                        warm_up_sizes(settings), metrics, settings.runtime_options(),
                                        settings.level_settings())
        first = served.current
        logger.info("serving model %s version %s (%s) from %s", first.name, first.version,
                    _accuracy_in_words(first.metadata), first.path)
        logger.debug("runtime: %s", first.runtime.describe())
        logger.info("accuracy levels: %s", levels_in_words(first.level_table, settings.adapt_queue_images,
                                                           settings.adapt_level))
        del first  # a swap must leave no reference to the model it replaces: its memory is released
        page, docs = page_urls(settings.host, settings.port)
        logger.info("web page: %s  API docs: %s", page, docs)
        batcher = MicroBatcher(lambda: served.current, settings.max_batch_size,
                               settings.max_batch_delay_ms / 1000.0, settings.max_queue_images,
                               on_batch=metrics.observe_batch, adapt_queue_images=settings.adapt_queue_images,
                               adapt_level=settings.adapt_level, concurrency=settings.batch_concurrency,
                               answer_timeout_s=settings.inference_timeout_s,
                               on_restart=lambda cause: metrics.batcher_restarts.inc())
        decoder = ThreadPoolExecutor(max_workers=settings.decode_threads, thread_name_prefix="decode")
        service = ClassifierService(settings, served, batcher, metrics, decoder)
        app.state.service = service
        batcher.start()
        warm_up = asyncio.create_task(_warm_up_then_follow(service, watcher))
        release_sigterm = hold_sigterm(settings.shutdown_grace_s, on_sigterm=service.stopping.set)
        stop_metrics = (serve_metrics(metrics, settings.host, settings.metrics_port)
                        if settings.metrics_port is not None else None)
        try:
            yield
        finally:
            if stop_metrics is not None:
                stop_metrics()
            release_sigterm()
            warm_up.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await warm_up
            await batcher.stop()
            decoder.shutdown(wait=True)

    # docs_url=None: app.api_docs serves /docs from local files instead of FastAPI's CDN-backed page.
    app = FastAPI(title="CIFAR-10 image classifier", description=DESCRIPTION, version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, generate_unique_id_function=operation_id)
    install_openapi(app, REQUEST_MODELS, upload_schemas())
    install_error_handlers(app)
    app.state.api_keys = api_keys  # app.access's checks read it from here
    app.include_router(predict_router)
    app.include_router(router)
    app.include_router(open_inference_router)
    app.include_router(tfserving_router)
    if settings.metrics_port is None:
        app.include_router(metrics_router)
    app.include_router(pages_router)
    app.include_router(docs_router)
    # Innermost: refuses a request without a valid key before the route reads its body (app.access).
    app.add_middleware(ApiKeyMiddleware, keys=api_keys)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes, timeout_s=settings.request_timeout_s)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"])
    # add_middleware wraps what is already there: the last added sees a request first.
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(OneLineStartupErrors)
    return app


def configure_logging(level: str) -> None:
    """The service's own log lines (model loaded, swapped, skipped) in uvicorn's format and at its level;
    without a handler Python would print only warnings, bare."""
    from uvicorn.logging import DefaultFormatter

    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(DefaultFormatter("%(levelprefix)s %(message)s", use_colors=False))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level.upper())


async def _warm_up_then_follow(service: ClassifierService, watcher: ModelWatcher | None) -> None:
    """Warm the first model up, then (if it may) follow the model folder until shutdown cancels this."""
    if watcher is not None:
        watcher.log_skipped_at_start()
    try:
        await asyncio.get_running_loop().run_in_executor(None, service.warm_up)
    except ModelLoadError as error:  # it loaded but answers nonsense: never report ready with it
        logger.error("%s", error)
        return
    service.ready.set()
    logger.info("ready: model warmed up, %.1f s after start", seconds_since_start())
    if watcher is not None:
        await watcher.run()


def levels_in_words(levels: LevelTable, adapt_queue_images: int, adapt_level: str) -> str:
    """One log line: the levels, the default, load adaptation and the levels that run below float32."""
    reduced = ", ".join(f"{name} {precision}" for name, precision in levels.reduced_precision.items()) or "none"
    adapt = (f"{adapt_level} above {adapt_queue_images} images waiting or computing" if adapt_queue_images and
             adapt_level in levels.names else "off")
    return f"{', '.join(levels.names)}; default {levels.default}; adaptation {adapt}; below float32: {reduced}"


def _accuracy_in_words(metadata: dict) -> str:
    accuracy = metadata.get("val_accuracy")
    if not isinstance(accuracy, int | float):
        return "no validation accuracy recorded"
    images = metadata.get("val_images")
    return f"validation accuracy {accuracy:.2%}" + (f" on {images:,} images" if isinstance(images, int) else "")


app = create_app()
