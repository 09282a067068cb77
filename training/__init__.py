"""Offline training: CIFAR-10 to a versioned TensorFlow SavedModel with reports."""
