"""CIFAR-10 image classifier service."""
