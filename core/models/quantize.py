"""Full-integer post-training quantisation: a trained Keras model as an int8 TF Lite flatbuffer.

Weights are int8 (per output channel for convolutions), and so are the activations, whose ranges
come from calibration images run through the float model (TF Lite's representative data set). The
input and output stay float32, so a caller feeds the same pixels (0..255, the model holds its own
preprocessing) and reads the same probabilities as from the fp32 engine; only the first and last
op convert. Only int8 builtin ops are allowed: a model with an op that has no int8 kernel fails to
convert instead of running part of its graph in float unnoticed. XNNPACK, the interpreter's default
CPU delegate, runs these ops with its quantised kernels (docs/measurements.md, "int8 inference").

It converts one model; which images calibrate it, and whether a run keeps the result, is
``core.inference.quantization``'s to decide.
"""

from __future__ import annotations

from collections.abc import Iterator

import keras
import numpy as np
import tensorflow as tf

from core.models import engine


def quantize(model: keras.Model, calibration: np.ndarray) -> bytes:
    """``model`` as a full-integer int8 TF Lite flatbuffer with float32 input and output, its
    activation ranges calibrated on ``calibration``: network inputs (n, ...) shaped as the model's,
    e.g. `core.data.loading.to_network_input` of decoded training images.

    Raises ValueError for calibration data of the wrong shape or without any image; the
    converter's own error when the model cannot be quantised (e.g. an op without an int8 kernel).
    """
    sample_shape = tuple(model.inputs[0].shape[1:])
    data = np.asarray(calibration, np.float32)
    if data.ndim != len(sample_shape) + 1 or tuple(data.shape[1:]) != sample_shape:
        raise ValueError(f"calibration inputs must be shaped (n, {', '.join(map(str, sample_shape))}), got {data.shape}")
    if len(data) == 0:
        raise ValueError("quantisation needs at least one calibration input")

    def representative() -> Iterator[list[np.ndarray]]:
        # One input per step: the converter records each tensor's min and max over all of them.
        for i in range(len(data)):
            yield [data[i : i + 1]]

    def full_integer(converter: tf.lite.TFLiteConverter) -> None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.float32
        converter.inference_output_type = tf.float32

    return engine.convert(model, full_integer)

