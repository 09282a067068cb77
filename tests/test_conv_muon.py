"""ConvMuon: conv kernels get orthogonalised updates, everything else Adam's."""

import keras
import numpy as np

from training.recipes import ConvMuon


def test_conv_kernels_move_by_an_orthogonalised_step_and_the_rest_by_adam() -> None:
    keras.config.set_dtype_policy("float32")
    conv = keras.layers.Conv2D(8, 3, use_bias=True)
    dense = keras.layers.Dense(10)
    conv.build((None, 8, 8, 4))
    dense.build((None, 16))
    variables = [conv.kernel, conv.bias, dense.kernel]
    optimizer = ConvMuon(learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=0.0, adam_weight_decay=0.0)
    optimizer.build(variables)
    assert [optimizer.adam_velocities[optimizer._get_variable_index(v)] is None for v in variables] == [
        True, False, False]

    rng = np.random.default_rng(0)
    # A gradient of very uneven singular values: Muon's step evens them out, which plain SGD would keep.
    gradient = (rng.normal(size=(36, 8)) * np.geomspace(1, 100, 8)).astype("float32")
    before, dense_before = conv.kernel.numpy().copy(), dense.kernel.numpy().copy()
    grads = [gradient.reshape(3, 3, 4, 8), np.ones(8, "float32"), np.ones((16, 10), "float32")]
    optimizer.apply(grads, variables)
    step = (before - conv.kernel.numpy()).reshape(36, 8)
    singular = np.linalg.svd(step, compute_uv=False)
    assert singular.max() / singular.min() < 3, singular  # the gradient's own ratio is ~100
    assert np.linalg.svd(gradient, compute_uv=False).max() / np.linalg.svd(gradient, compute_uv=False).min() > 30
    # Adam's first step moves every weight by the learning rate, whatever the gradient's size.
    assert np.allclose(dense_before - dense.kernel.numpy(), 0.01, atol=1e-4)
