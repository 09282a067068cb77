"""Python client for the CIFAR-10 classifier service: ``Client`` / ``AsyncClient`` and the
``cifar10-client`` command. Depends on httpx alone (no TensorFlow, no numpy).

    from cifar10_client import Client
    with Client("http://127.0.0.1:8000") as client:
        print(client.predict("cat.jpg").label)
"""

from cifar10_client.client import DEFAULT_URL, AsyncClient, Client, FileResult
from cifar10_client.errors import (
    APIError,
    ClientError,
    ConnectionLost,
    OverlayNotWritten,
    RequestTimeout,
    ServiceUnavailable,
    ServiceUnreachable,
    UnexpectedAnswer,
    UnreadableFile,
)
from cifar10_client.models import (
    ClassProbability,
    ExplainedPrediction,
    Explanation,
    Health,
    Metadata,
    ModelInfo,
    Prediction,
    ServingLimits,
)

__all__ = [
    "DEFAULT_URL",
    "APIError",
    "AsyncClient",
    "ClassProbability",
    "Client",
    "ClientError",
    "ConnectionLost",
    "ExplainedPrediction",
    "Explanation",
    "FileResult",
    "Health",
    "Metadata",
    "ModelInfo",
    "OverlayNotWritten",
    "Prediction",
    "RequestTimeout",
    "ServiceUnavailable",
    "ServiceUnreachable",
    "ServingLimits",
    "UnexpectedAnswer",
    "UnreadableFile",
]
