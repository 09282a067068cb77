"""Training-time augmentation on whole uint8 batches: flip, translate, cutout.

One vectorised op per augmentation and batch instead of a tf.data map per image: 92 against 237 us
of CPU per image for the airbench recipe's three augmentations (docs/training.md), time the two
cores give back to the training step.
"""

from dataclasses import dataclass

import keras
import tensorflow as tf

from core.contract import IMAGE_SIZE

FLIP_MODES = ("none", "random", "alternating")


@dataclass(frozen=True)
class Augmentation:
    flip: str = "none"  # "random": each image mirrored with probability 1/2 every epoch; "alternating":
    # mirrored in every other epoch, from a random first epoch on (airbench: the same views as random
    # flipping over two epochs, without the repeats that cost random flipping ~2 of 15 epochs)
    translate_pixels: int = 0  # random shift by reflect-padding and cropping; 0 = none
    cutout_pixels: int = 0  # side of a random square set to the mean colour (DeVries & Taylor); 0 = none

    def __post_init__(self) -> None:
        if self.flip not in FLIP_MODES:
            raise ValueError(f"flip must be one of {FLIP_MODES}, not {self.flip!r}")

    @property
    def any(self) -> bool:
        return self.flip != "none" or self.translate_pixels > 0 or self.cutout_pixels > 0


def augment_batch(images: tf.Tensor, indices: tf.Tensor, augmentation: Augmentation, epoch: tf.Variable,
                  first_flips: tf.Tensor, fill: tf.Tensor) -> tf.Tensor:
    """``images`` uint8 ``(b, 32, 32, 3)`` at ``indices`` of the training split, augmented. ``epoch`` is the
    current epoch (kept by :class:`EpochCounter`), ``first_flips`` which images the alternating flip mirrors
    in even epochs, ``fill`` the uint8 colour of cutout squares."""
    batch = tf.shape(images)[0]
    if augmentation.flip == "random":
        images = _mirror_where(images, tf.random.uniform([batch]) < 0.5)
    elif augmentation.flip == "alternating":
        odd_epoch = tf.equal(epoch % 2, 1)
        images = _mirror_where(images, tf.not_equal(tf.gather(first_flips, indices), odd_epoch))
    pad = augmentation.translate_pixels
    positions = tf.range(IMAGE_SIZE)
    if pad:
        padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
        offsets = tf.random.uniform([batch, 2], 0, 2 * pad + 1, dtype=tf.int32)
        images = tf.gather(padded, offsets[:, :1] + positions, axis=1, batch_dims=1)
        images = tf.gather(images, offsets[:, 1:] + positions, axis=2, batch_dims=1)
    side = augmentation.cutout_pixels
    if side:
        # The square's centre is anywhere in the image, so it may hang over the edge (DeVries & Taylor).
        corners = tf.random.uniform([batch, 2], 0, IMAGE_SIZE, dtype=tf.int32) - side // 2
        rows = (positions >= corners[:, :1]) & (positions < corners[:, :1] + side)
        cols = (positions >= corners[:, 1:]) & (positions < corners[:, 1:] + side)
        images = tf.where(rows[:, :, None, None] & cols[:, None, :, None], fill, images)
    return images


def _mirror_where(images: tf.Tensor, mirrored: tf.Tensor) -> tf.Tensor:
    return tf.where(mirrored[:, None, None, None], tf.reverse(images, [2]), images)


class EpochCounter(keras.callbacks.Callback):
    """Keeps ``epoch`` (a variable the input pipeline reads) at the epoch being trained.

    Keras makes each epoch's dataset iterator after ``on_epoch_begin``, so no batch of an epoch is made
    before its number is set."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="augmentation_epoch")

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch.assign(epoch)
