"""Model functions. Every model takes RGB pixels as float32 in [0, 255] and returns logits.

Softmax, temperature and test-time augmentation are added by the export head
(``training.export``), so all architectures share one contract. The sizes and constants of
each network are its recipe's, in ``training.recipes``; here they are parameters.
"""

from dataclasses import dataclass

import keras
import numpy as np

from core.contract import CHANNELS, IMAGE_SIZE, NUM_CLASSES

# Per-channel statistics of the CIFAR-10 training set, on the [0, 1] scale.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# ITU-R BT.601 luma weights, as Pillow's convert("L") uses.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def _inputs() -> keras.KerasTensor:
    return keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, CHANNELS), dtype="float32", name="pixels")


@dataclass(frozen=True)
class TutorialNetwork:
    """The tutorial's CNN: Conv -> MaxPool 2 -> Dropout -> Dense -> Dropout -> Dense 10."""

    conv_filters: int
    kernel_size: int
    conv_dropout: float
    dense_units: int
    dense_dropout: float
    gray: bool  # convert the RGB input to luma inside the model


def tutorial_cnn(network: TutorialNetwork) -> keras.Model:
    inputs = _inputs()
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    if network.gray:
        # A frozen 1x1 convolution is RGB -> luma: the gray model still accepts RGB input.
        to_gray = keras.layers.Conv2D(1, 1, use_bias=False, trainable=False, name="rgb_to_gray")
        x = to_gray(x)
        to_gray.set_weights([np.asarray(LUMA_WEIGHTS, dtype="float32").reshape(1, 1, 3, 1)])
    x = keras.layers.Conv2D(network.conv_filters, network.kernel_size, activation="relu")(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Dropout(network.conv_dropout)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(network.dense_units, activation="relu")(x)
    x = keras.layers.Dropout(network.dense_dropout)(x)
    logits = keras.layers.Dense(NUM_CLASSES, name="logits")(x)
    return keras.Model(inputs, logits, name="tutorial_gray" if network.gray else "tutorial_rgb")


# PyTorch's default init, uniform(+-1/sqrt(fan_in)): with BatchNorm after every conv the
# weight scale sets the effective learning rate, and the airbench hyperparameters assume it.
def _torch_default_init() -> keras.initializers.Initializer:
    return keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in", distribution="uniform")


class PartialDirac(keras.initializers.Initializer):
    """PyTorch's default init, with the first ``in_channels`` filters set to the identity.

    airbench's "implicit residual": a plain conv stack starts out passing its input through,
    which trains like a residual network without the skip connections' cost.
    """

    def __call__(self, shape: tuple[int, ...], dtype: str | None = None) -> keras.KerasTensor:
        kh, kw, in_channels, out_channels = shape
        kernel = keras.ops.convert_to_numpy(_torch_default_init()(shape, dtype="float32"))
        identity = min(in_channels, out_channels)
        kernel[..., :identity] = 0.0
        kernel[kh // 2, kw // 2, np.arange(identity), np.arange(identity)] = 1.0
        return keras.ops.convert_to_tensor(kernel, dtype=dtype)


@dataclass(frozen=True)
class AirbenchNetwork:
    """Keller Jordan's airbench94 network: a whitening stem and three conv groups of two convs each."""

    widths: tuple[int, int, int]  # channels of the three conv groups
    whiten_width: int  # filters of the 2x2 whitening stem (its eigenvectors, each used with both signs)
    bn_momentum: float  # Keras' momentum: the weight of the running average, 1 - PyTorch's
    bn_epsilon: float
    logit_scale: float  # the logits are multiplied by this before the loss


def _conv_bn_gelu(x: keras.KerasTensor, width: int, network: AirbenchNetwork, pool: bool) -> keras.KerasTensor:
    x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_initializer=PartialDirac())(x)
    if pool:
        x = keras.layers.MaxPooling2D(2)(x)
    # No learned scale: GELU follows, and a free scale only slows the optimiser down (airbench).
    x = keras.layers.BatchNormalization(momentum=network.bn_momentum, epsilon=network.bn_epsilon, scale=False)(x)
    return keras.layers.Activation("gelu")(x)


def airbench_cnn(network: AirbenchNetwork) -> keras.Model:
    """The 2x2 stem's kernel is frozen and set from the data by :func:`init_whitening`; its bias learns."""
    inputs = _inputs()
    # The stem stays float32 under mixed precision: whitening amplifies the smallest pixel
    # differences up to 45x, which bfloat16's 8-bit mantissa would round away. It is 1% of the work.
    x = keras.layers.Rescaling(1.0 / 255.0, dtype="float32")(inputs)
    x = keras.layers.Normalization(mean=CIFAR10_MEAN, variance=np.square(CIFAR10_STD), dtype="float32")(x)
    whiten = keras.layers.Conv2D(network.whiten_width, 2, padding="valid", name="whiten", dtype="float32")
    x = keras.layers.Activation("gelu", dtype="float32")(whiten(x))
    whiten.kernel.trainable = False
    for width in network.widths:
        x = _conv_bn_gelu(x, width, network, pool=True)
        x = _conv_bn_gelu(x, width, network, pool=False)
    x = keras.layers.MaxPooling2D(3)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(NUM_CLASSES, use_bias=False, kernel_initializer=_torch_default_init())(x)
    # float32 logits whatever the training precision: the loss and the softmax need the resolution.
    logits = keras.layers.Rescaling(network.logit_scale, name="logits", dtype="float32")(x)
    return keras.Model(inputs, logits, name="airbench")


def init_whitening(model: keras.Model, images: np.ndarray, eps: float) -> None:
    """Set the frozen ``whiten`` stem to the ZCA-style eigenbasis of 2x2 patches of ``images``.

    Each eigenvector is scaled by 1/sqrt(eigenvalue + ``eps``) and used twice, positive and negated,
    so the GELU after it keeps both signs (airbench's init_whitening_conv).
    """
    whiten = model.get_layer("whiten")
    kh, kw, channels, filters = whiten.kernel.shape
    normalized = (images.astype("float32") / 255.0 - np.asarray(CIFAR10_MEAN, "float32")) / np.asarray(
        CIFAR10_STD, "float32"
    )
    patches = np.lib.stride_tricks.sliding_window_view(normalized, (kh, kw), axis=(1, 2))
    # sliding_window_view puts the window last: (n, h, w, c, kh, kw) -> rows of (kh, kw, c).
    patches = patches.transpose(0, 1, 2, 4, 5, 3).reshape(-1, kh * kw * channels).astype("float64")
    covariance = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]
    scaled = eigenvectors[:, order] / np.sqrt(eigenvalues[order] + eps)
    kernel = np.concatenate([scaled, -scaled], axis=1)[:, :filters].reshape(kh, kw, channels, filters)
    whiten.set_weights([kernel.astype("float32"), np.zeros(filters, dtype="float32")])
