"""SmoothGrad (Smilkov et al., 2017): the input pixels the explained class's score is sensitive to.

A plain gradient with respect to the pixels is noisy: it flickers from pixel to pixel. Averaged
over copies of the image with a little noise added, the flicker cancels and what stays is where
the score changes with the image. Needs a differentiable Keras model (not only its predictions),
but no feature map: it works for any architecture, transformers included.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from core.inference import explanation

if TYPE_CHECKING:
    import keras

SAMPLES = 16
NOISE = 0.10  # of the 0..255 range: the paper's 10-20 %, at its gentle end for low-contrast X-rays
BLUR_SIGMA = 1.0  # in input pixels: a light Gaussian smoothing of the per-pixel map


def smoothgrad(
    model: keras.Model, image: np.ndarray, class_index: int | None = None, samples: int = SAMPLES, noise: float = NOISE, seed: int = 0
) -> np.ndarray:
    """SmoothGrad heatmap of one class: (S, S) float32 in [0, 1], at the input's resolution.

    The mean over `samples` noisy copies (Gaussian noise, sd `noise` x 255, from `seed`: the same
    image gives the same map) of |d score / d pixel|, the maximum over the colour channels, then a
    Gaussian blur of sigma `BLUR_SIGMA` pixels, divided by the maximum. The score is the explained
    class's logit (`explanation.class_score`, so a saturated sigmoid still has gradients); for a
    softmax the class is chosen on the clean image. All the copies go through one tape call. The
    absolute value shows sensitivity, not its sign: unlike Grad-CAM it also marks pixels whose
    change would lower the score; all zeros only when no gradient reaches the input.
    """
    import tensorflow as tf

    clean = explanation.network_input(image, model)
    rng = np.random.default_rng(seed)
    noisy = clean + rng.normal(0.0, noise * 255.0, (samples, *clean.shape[1:])).astype(np.float32)
    x = tf.constant(np.concatenate([clean, noisy]))  # the clean image first: it decides a softmax's class
    with explanation.LOCK, tf.GradientTape() as tape:
        tape.watch(x)
        score, _ = explanation.class_score(model, x, class_index)
        total = tf.reduce_sum(score[1:])  # each copy's gradient is its own score's: the copies are independent
    gradients = tape.gradient(total, x)
    if gradients is None:
        raise ValueError(f"the output of {model.name!r} does not depend on its input pixels")
    sensitivity = np.abs(gradients.numpy()[1:].astype(np.float64)).mean(axis=0).max(axis=-1)
    return explanation.normalised(ndimage.gaussian_filter(sensitivity, BLUR_SIGMA, mode="nearest"))
