"""Full-integer post-training quantisation: a trained Keras model as an int8 ONNX model.

Weights are int8 (per output channel), and activations uint8, whose ranges come from calibration
images run through the float model (min and max of each tensor). The input and output stay
float32, so a caller feeds the same pixels (0..255, the model holds its own preprocessing) and reads
the same probabilities as from the fp32 engine. The model is written in ONNX's QDQ form (each
quantised tensor between a QuantizeLinear and a DequantizeLinear), which ONNX Runtime fuses into its
integer convolution and matrix kernels.

Why ONNX Runtime and not TF Lite's int8: XNNPACK ran TF Lite's full-integer MobileNetV2 at
1.40-1.46x its fp32 speed on this project's 2-core machine, and ONNX Runtime's int8 kernels run the
same network at about 1.8x (docs/measurements.md, "int8 inference"). The Keras model goes to ONNX
through tf2onnx (`core.models.model_files.convert_to_onnx`, the model card's ONNX copy), and
onnxruntime's own quantiser does the rest.

It converts one model; which images calibrate it, and whether a run keeps the result, is
``core.inference.quantization``'s to decide.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import keras
import numpy as np

from core.models import model_files


def quantize(model: keras.Model, calibration: np.ndarray) -> bytes:
    """``model`` as a full-integer int8 ONNX model (QDQ) with float32 input and output, its
    activation ranges calibrated on ``calibration``: network inputs (n, ...) shaped as the model's,
    e.g. `core.data.loading.to_network_input` of decoded training images.

    Raises ValueError for calibration data of the wrong shape or without any image;
    `model_files.ModelFileError` when tf2onnx cannot convert the model; onnxruntime's own error when
    it cannot quantise it.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    sample_shape = tuple(model.inputs[0].shape[1:])
    data = np.asarray(calibration, np.float32)
    if data.ndim != len(sample_shape) + 1 or tuple(data.shape[1:]) != sample_shape:
        raise ValueError(f"calibration inputs must be shaped (n, {', '.join(map(str, sample_shape))}), got {data.shape}")
    if len(data) == 0:
        raise ValueError("quantisation needs at least one calibration input")

    float_model = model_files.convert_to_onnx(model)
    input_name = onnx.load_from_string(float_model).graph.input[0].name

    class OneAtATime(CalibrationDataReader):
        # One input per step: the calibrator records each tensor's min and max over all of them.
        def __init__(self) -> None:
            self.next = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.next >= len(data):
                return None
            self.next += 1
            return {input_name: data[self.next - 1 : self.next]}

    with tempfile.TemporaryDirectory() as work:
        float_path, prepared, quantised = (Path(work) / name for name in ("float.onnx", "prepared.onnx", "int8.onnx"))
        float_path.write_bytes(float_model)
        # Folds constants and infers shapes so that every convolution is quantised (onnxruntime's
        # advice before static quantisation); symbolic shape inference would need sympy.
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(quantised), OneAtATime(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
        )
        return quantised.read_bytes()
