"""What the service (``app``) and training (``training``) share, importing neither.

The export contract and class names, preprocessing, CPU facts, the accuracy-level table, loading and
checking a model version, and TensorFlow's import and thread pools. Nothing here imports FastAPI,
Keras or either half of the project (tests/test_imports.py checks it).
"""
