"""Where the model looked: an occlusion saliency map over the 32x32 input, from forward passes only.

A grey-ish square (the image's own mean colour) hides one patch at a time; the drop in the explained
class's probability when a patch is hidden is that patch's importance, and each pixel gets the mean over
the patches that cover it. The original image and every occluded copy form one batch, so an
explanation is one model call whatever the runtime (no gradients, no access to the graph).
Zeiler & Fergus 2014, "Visualizing and Understanding Convolutional Networks".
"""

from dataclasses import dataclass

import numpy as np

from core.contract import IMAGE_SIZE

PATCH = 8
# 6, not 4: 5 x 5 patches (a batch of 26) instead of 7 x 7 (50). bench/explain.py on 2 cores: 50 images at the
# fast level take ~137 ms, over the 100 ms budget; every pixel is still covered by 1 to 4 patches.
STRIDE = 6


@dataclass(frozen=True)
class Occlusion:
    patch: int = PATCH
    stride: int = STRIDE

    @property
    def offsets(self) -> list[int]:
        return list(range(0, IMAGE_SIZE - self.patch + 1, self.stride))

    @property
    def windows(self) -> list[tuple[int, int]]:
        """Top-left corner (row, column) of every occluding patch, row by row."""
        return [(row, column) for row in self.offsets for column in self.offsets]

    @property
    def batch_size(self) -> int:
        """Images in one explanation's batch: the original plus one per patch (25 + 1 by default)."""
        return 1 + len(self.windows)

    def batch(self, image: np.ndarray) -> np.ndarray:
        """uint8 ``(32, 32, 3)`` -> uint8 ``(batch_size, 32, 32, 3)``: the image, then each occluded copy."""
        fill = image.reshape(-1, image.shape[-1]).mean(axis=0).round().astype(np.uint8)
        images = np.repeat(image[np.newaxis], self.batch_size, axis=0)
        for index, (row, column) in enumerate(self.windows, start=1):
            images[index, row : row + self.patch, column : column + self.patch] = fill
        return images

    def saliency(self, probabilities: np.ndarray, label: int) -> np.ndarray:
        """float32 ``(32, 32)`` from the batch's probabilities: per pixel, the mean drop in class ``label``'s
        probability over the patches covering it (negative where hiding it made the class more likely)."""
        drops = probabilities[0, label] - probabilities[1:, label]
        total = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float64)
        count = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float64)
        for drop, (row, column) in zip(drops, self.windows, strict=True):
            total[row : row + self.patch, column : column + self.patch] += drop
            count[row : row + self.patch, column : column + self.patch] += 1
        return (total / np.maximum(count, 1)).astype(np.float32)
