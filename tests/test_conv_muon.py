"""ConvMuon and FilterMuonSGD: conv kernels get orthogonalised updates, everything else Adam's or SGD's."""

import keras
import numpy as np
import pytest

from training.optimizers import ConvMuon, FilterMuonSGD


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


def test_filter_muon_sgd_steps_each_kernel_at_a_fixed_norm_and_the_rest_by_sgd() -> None:
    keras.config.set_dtype_policy("float32")
    conv = keras.layers.Conv2D(8, 3, use_bias=False)
    dense = keras.layers.Dense(10, use_bias=False)
    conv.build((None, 8, 8, 4))
    dense.build((None, 16))
    variables = [conv.kernel, dense.kernel]
    optimizer = FilterMuonSGD(bias_scale=1.0, filter_lr_ratio=0.5, filter_momentum=0.6, newton_schulz_steps=5,
                              learning_rate=0.1, momentum=0.9, nesterov=True)
    optimizer.build(variables)

    rng = np.random.default_rng(0)
    gradient = (rng.normal(size=(36, 8)) * np.geomspace(1, 100, 8)).astype("float32")
    kernel_before, dense_before = conv.kernel.numpy().copy(), dense.kernel.numpy().copy()
    dense_gradient = rng.normal(size=(16, 10)).astype("float32")
    optimizer.apply([gradient.reshape(3, 3, 4, 8), dense_gradient], variables)

    # The kernel is first scaled to norm sqrt(out channels), then moved by 0.1 * 0.5 times an orthogonalised
    # step: the Nesterov momentum (1 + 0.6) * gradient, whose uneven singular values (~100x) come out near 1.
    at_fixed_norm = kernel_before * np.sqrt(8) / np.linalg.norm(kernel_before)
    step = ((at_fixed_norm - conv.kernel.numpy()) / 0.05).reshape(36, 8)
    singular = np.linalg.svd(step, compute_uv=False)
    assert np.all((singular > 0.5) & (singular < 1.5)), singular
    left, _, right = np.linalg.svd(gradient, full_matrices=False)
    assert np.allclose(step, left @ right, atol=0.35)  # roughly U V^T of the gradient
    # The rest is the SGD's Nesterov step: lr * (1 + momentum) * gradient on the first step.
    assert np.allclose(dense_before - dense.kernel.numpy(), 0.1 * 1.9 * dense_gradient, atol=1e-5)


def test_filter_muon_sgd_needs_sgd_momentum_for_its_buffers() -> None:
    with pytest.raises(ValueError, match="momentum > 0"):
        FilterMuonSGD(bias_scale=1.0, filter_lr_ratio=0.5, filter_momentum=0.6, newton_schulz_steps=3,
                      learning_rate=0.1, momentum=0.0)
