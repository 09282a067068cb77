"""What the service (``app``) and training (``training``) share, importing neither.

The export contract and class names, preprocessing, CPU facts, the accuracy-level table, checking a model
version and loading it with the serving runtime (OpenVINO), and, for training only, TensorFlow's import and
thread pools (core.tensorflow_runtime: serving never imports it). Nothing here imports FastAPI,
Keras or either half of the project (tests/test_imports.py checks it).
"""
