"""CIFAR-10 image classifier service."""

__version__ = "1.0.0"  # the API's version: /openapi.json and the Open Inference Protocol's server metadata
