"""Pixel scalings: how a model trained elsewhere expects its pixels, from this project's 0..255 RGB.

`SCALINGS` holds one `Scaling` per convention a model file cannot declare (`python -m core import
--scaling`, the Import form): pixels as they are, 0..1, -1..1, ImageNet "caffe" (BGR, mean
subtracted) and ImageNet "torch" (mean and std per channel). Applied by
`core.models.imported.model_input`; kept here, without Keras, so pages list them without loading it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scaling:
    """How pixels in 0..255 become the model's input: x * multiply + add per channel, channels in `order`."""

    name: str
    description: str
    multiply: tuple[float, float, float]
    add: tuple[float, float, float]
    order: str = "RGB"


_TORCH_MEAN, _TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
SCALINGS: dict[str, Scaling] = {
    s.name: s
    for s in (
        Scaling("0-255", "pixels as they are, 0..255 (a model that scales inside, e.g. this project's own exports)",
                (1.0,) * 3, (0.0,) * 3),
        Scaling("0-1", "pixels / 255, 0..1 (Keras `Rescaling(1/255)`, many tutorials)", (1 / 255,) * 3, (0.0,) * 3),
        Scaling("-1-1", "pixels / 127.5 − 1, −1..1 (Keras MobileNet, Xception, Inception `preprocess_input`)",
                (1 / 127.5,) * 3, (-1.0,) * 3),
        Scaling("caffe", "BGR, ImageNet mean subtracted, no scaling (Keras ResNet50, VGG `preprocess_input`)",
                (1.0,) * 3, tuple(-m for m in _CAFFE_MEAN_BGR), "BGR"),
        Scaling("torch", "pixels / 255, then ImageNet mean and std per channel (torchvision, timm)",
                tuple(1 / (255 * s) for s in _TORCH_STD), tuple(-m / s for m, s in zip(_TORCH_MEAN, _TORCH_STD, strict=True))),
    )
}
