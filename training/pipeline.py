"""The input pipeline: uint8 images -> shuffled, augmented float32 batches with their targets.

Shuffling is per image and reproducible from the seed; augmentation runs on whole batches
(:mod:`training.augment`); the targets are one-hot labels, mixed with a teacher's probabilities when
the recipe distills (:mod:`training.distill`).
"""

import numpy as np
import tensorflow as tf

from core.contract import NUM_CLASSES
from training.architectures import CIFAR10_MEAN
from training.augment import Augmentation, augment_batch
from training.data import Split
from training.distill import mixed_targets


def make_pipeline(split: Split, batch_size: int, seed: int, augmentation: Augmentation | None = None,
                  epoch: tf.Variable | None = None, teacher: np.ndarray | None = None,
                  teacher_weight: float = 0.0) -> tf.data.Dataset:
    """Batches of ``split``: shuffled and augmented when ``augmentation`` is given (training), in order
    otherwise. ``epoch`` (an :class:`training.augment.EpochCounter`'s) drives the alternating flip;
    ``teacher`` holds soft targets per image of ``split``, mixed in at ``teacher_weight``."""
    indices = np.arange(len(split.labels), dtype=np.int64)
    dataset = tf.data.Dataset.from_tensor_slices((split.images, split.labels, indices))
    if augmentation is not None:
        dataset = dataset.shuffle(len(split.labels), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    fill = tf.constant(np.round(np.asarray(CIFAR10_MEAN) * 255), tf.uint8)
    first_flips = tf.constant(np.random.default_rng(seed).random(len(split.labels)) < 0.5)
    epoch = epoch if epoch is not None else tf.constant(0, tf.int64)
    soft = tf.constant(teacher, tf.float32) if teacher is not None else None

    def to_model_input(images: tf.Tensor, labels: tf.Tensor, batch_indices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        if augmentation is not None and augmentation.any:
            images = augment_batch(images, batch_indices, augmentation, epoch, first_flips, fill)
        targets = tf.one_hot(labels, NUM_CLASSES)
        if soft is not None:
            targets = mixed_targets(targets, tf.gather(soft, batch_indices), teacher_weight)
        return tf.cast(images, tf.float32), targets

    return dataset.map(to_model_input, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
