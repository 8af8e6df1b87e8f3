"""The search space of a search: every hyperparameter a trial draws, and the user's edits of it.

This module owns the one definition of each hyperparameter (its kind, default range or choices,
default value and a line of help). The model builders in `core.models` draw their hyperparameters
through `draw` from these definitions, and the Tune form and the CLI show and edit the same ones,
so the space shown is the space searched.

An edit narrows one hyperparameter, never widens it:

* one value fixes it (`"dropout": 0.2`, `--hp dropout=0.2`);
* `{"min": a, "max": b}` narrows a number's range (`--hp learning_rate=1e-4:1e-3`);
* a list keeps some of a choice's values (`"dense_units": [64, 128]`, `--hp dense_units=64,128`).

Edits are saved as the `space` of `settings.json` (runs without it use the default space) and
reach Keras Tuner registered in advance (`registered_in_advance`): Keras Tuner keeps the first
definition of a name, so a builder's later `draw` of it returns the edited value.

Everything here is pure and loads no TensorFlow (Keras Tuner is imported only by the two functions
that hand a definition to it), so the dashboard's pages read it cheaply.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.data import augmentation
from core.models import families

if TYPE_CHECKING:
    import keras_tuner

FLOAT, INT, CHOICE, BOOLEAN = "float", "int", "choice", "boolean"
RANGE_KINDS = (FLOAT, INT)


class SpaceError(ValueError):
    """An edit of the search space that cannot apply; the message names the hyperparameter and the fix."""

    def __init__(self, message: str, name: str | None = None):
        super().__init__(message)
        self.name = name  # the hyperparameter at fault, or None for a problem with the whole edit


@dataclass(frozen=True)
class Hyperparameter:
    """One hyperparameter: a number in [low, high] (floats and ints) or one of `choices`."""

    name: str
    kind: str  # FLOAT, INT, CHOICE or BOOLEAN
    help: str
    default: Any
    low: float | None = None
    high: float | None = None
    step: float | None = None  # a grid of low, low + step, ... (None: continuous floats, every int)
    log: bool = False  # drawn on a log scale
    choices: tuple = ()

    @property
    def fixed(self) -> bool:
        """Only one value is left to try."""
        if self.kind in RANGE_KINDS:
            return math.isclose(self.low, self.high)
        return len(self.choices) == 1

    @property
    def only_value(self) -> Any:
        return (int(self.low) if self.kind == INT else self.low) if self.kind in RANGE_KINDS else self.choices[0]

    def describe(self) -> str:
        """The range or the choices in words, e.g. `0.0001 to 0.01 (log scale)`."""
        if self.fixed:
            return f"fixed at {describe_value(self.only_value)}"
        if self.kind in RANGE_KINDS:
            grid = f", step {describe_value(self.step)}" if self.step else ""
            return f"{describe_value(self.low)} to {describe_value(self.high)}{' (log scale)' if self.log else ''}{grid}"
        return "one of " + ", ".join(describe_value(c) for c in self.choices)


def describe_value(value: Any) -> str:
    """A value as the messages and the form write it: 0.0001, 64, true."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:g}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------
# The definitions
# --------------------------------------------------------------------------

HEAD_DROPOUT = Hyperparameter(
    "dropout", FLOAT, "Fraction of the features dropped at random while training, against overfitting.", 0.2, 0.0, 0.5, 0.1
)
HEAD_DENSE_UNITS = Hyperparameter(
    "dense_units", CHOICE, "Width of a hidden ReLU layer in the head; 0: none, the features go straight to the output.",
    0, choices=(0, 64, 128, 256),
)
HEAD_LEARNING_RATE = Hyperparameter(
    "learning_rate", FLOAT, "Adam's step size for the head (or the whole network trained from scratch).", 1e-3, 1e-4, 1e-2, log=True
)
FINETUNE_LEARNING_RATE = Hyperparameter(
    "learning_rate", FLOAT, "Adam's step size; small, so the pretrained backbone layers move little.", 1e-4, 1e-5, 1e-3, log=True
)
UNFREEZE_LAYERS = Hyperparameter(
    "unfreeze_layers", INT, "Weighted backbone layers, counted from the top, that train (batch norms stay frozen; "
    "more than the backbone has means all of them).", 20, 0, 100, 10,
)
AUGMENT = Hyperparameter(
    "augment", CHOICE, "The training augmentation preset (rotation, zoom, shift, contrast, brightness, sharpness).",
    "off", choices=tuple(name for name in augmentation.AUGMENTATIONS if augmentation.in_model(name)),
)
CNN_FILTERS = Hyperparameter("filters", CHOICE, "Filters of the first conv block; each further block doubles them (at most 256).",
                             32, choices=(16, 32, 64))
CNN_KERNEL_SIZE = Hyperparameter("kernel_size", CHOICE, "Side of the square convolution kernels, in pixels.", 3, choices=(3, 5))
CNN_BATCH_NORM = Hyperparameter("batch_norm", BOOLEAN, "Batch normalisation after each convolution.", True, choices=(True, False))
CNN_DROPOUT = Hyperparameter("dropout", FLOAT, "Fraction of the pooled features dropped at random while training.", 0.3, 0.0, 0.5, 0.1)
CNN_DENSE_UNITS = Hyperparameter("dense_units", CHOICE, "Width of the hidden ReLU layer before the output.", 64, choices=(32, 64, 128, 256))

# The transformer encoder (core.models.transformer) of the hybrid, on a cut's activations, and of the ViT, on
# patches; trained from scratch in both
HYBRID_DEPTH = Hyperparameter("depth", INT, "Transformer encoder blocks (attention and MLP, each with a residual).", 2, 1, 6)
HYBRID_HEADS = Hyperparameter("heads", CHOICE, "Attention heads per block; each sees width / heads channels.", 4, choices=(2, 4, 8))
HYBRID_WIDTH = Hyperparameter("width", CHOICE, "Token width d: each cut-point position (or ViT patch) is projected to d channels.",
                              128, choices=(64, 128, 192))
HYBRID_MLP_RATIO = Hyperparameter("mlp_ratio", CHOICE, "Hidden width of each block's GELU MLP, as a multiple of d.", 2, choices=(2, 4))
HYBRID_DROPOUT = Hyperparameter("dropout", FLOAT, "Fraction of the attention and MLP outputs dropped at random while training.",
                                0.1, 0.0, 0.3, 0.05)
HYBRID_STOCHASTIC_DEPTH = Hyperparameter(
    "stochastic_depth", FLOAT, "Chance that the last block's attention or MLP branch is skipped for an image while training "
    "(earlier blocks: less, down to 0 for the first).", 0.1, 0.0, 0.2, 0.05,
)
HYBRID_POOLING = Hyperparameter("pooling", CHOICE, "What the head reads: a class token's output (token) or the mean of all tokens "
                                "(average).", "token", choices=("token", "average"))
HYBRID_LEARNING_RATE = Hyperparameter(
    "learning_rate", FLOAT, "AdamW's step size; the encoder starts from random weights, so larger than for fine-tuning.",
    5e-4, 1e-4, 3e-3, log=True,
)
HYBRID_WEIGHT_DECAY = Hyperparameter("weight_decay", FLOAT, "AdamW's weight decay, against overfitting the encoder.",
                                     1e-2, 1e-5, 1e-1, log=True)
VIT_PATCH = Hyperparameter("patch", CHOICE, "Side of the square patches the ViT cuts the image into, in pixels; each "
                           "patch is one token.", 16, choices=(8, 16, 32))
HYBRID_TOKENS = Hyperparameter(
    "tokens", CHOICE, "Where the hybrid's tokens come from: the frozen stem's cut (cut: 14×14 positions at 224 px) or the "
    "backbone's blocks above the cut, fine-tuned with the encoder (top: its last feature map, 7×7 at 224 px).",
    "cut", choices=("cut", "top"),
)
ENCODER_SPACE = (HYBRID_DEPTH, HYBRID_HEADS, HYBRID_WIDTH, HYBRID_MLP_RATIO, HYBRID_DROPOUT, HYBRID_STOCHASTIC_DEPTH,
                HYBRID_POOLING, HYBRID_LEARNING_RATE, HYBRID_WEIGHT_DECAY)


def cnn_conv_blocks(image_size: int) -> Hyperparameter:
    """Conv blocks of the custom CNN: each halves the image, so the input size bounds how many fit."""
    top = max_conv_blocks(image_size)
    return Hyperparameter(
        "conv_blocks", INT, f"Conv blocks (conv, batch norm, ReLU, 2× pooling); at most {top} at {image_size} px.",
        min(3, top), 1, top,
    )


def default_space(family: str, mode: str, image_size: int, augment: str = "off", activation_cache: bool = True) -> dict[str, Hyperparameter]:
    """Every hyperparameter a trial of this search draws, by name, in the order the model draws them.

    `family`, `mode`, `augment` and `activation_cache` are the search's settings (`mode` is ignored
    for the custom CNN, which has none); they choose the model builder exactly as
    `core.search.hypermodel.SearchSpace` does.
    """
    searched_augment = [AUGMENT] if augment == augmentation.SEARCH else []
    if family == "custom_cnn":
        space = [*searched_augment, cnn_conv_blocks(image_size), CNN_FILTERS, CNN_KERNEL_SIZE, CNN_BATCH_NORM,
                 CNN_DROPOUT, CNN_DENSE_UNITS, HEAD_LEARNING_RATE]
    elif family in families.FAMILIES and families.FAMILIES[family].patches:  # the same encoder on patches of the pixels
        space = [*searched_augment, VIT_PATCH, *ENCODER_SPACE]
    elif family in families.FAMILIES and families.FAMILIES[family].hybrid:  # one space whatever the mode: it trains only on the cut's activations
        space = [HYBRID_TOKENS, *ENCODER_SPACE]
    elif mode == "frozen":
        space = [HEAD_DROPOUT, HEAD_DENSE_UNITS, HEAD_LEARNING_RATE]
    elif activation_cache:  # cut-point fine-tuning: the blocks above the cut always train
        space = [HEAD_DROPOUT, HEAD_DENSE_UNITS, FINETUNE_LEARNING_RATE]
    else:
        space = [UNFREEZE_LAYERS, *searched_augment, HEAD_DROPOUT, HEAD_DENSE_UNITS, FINETUNE_LEARNING_RATE]
    return {hp.name: hp for hp in space}


# --------------------------------------------------------------------------
# Edits
# --------------------------------------------------------------------------


def apply_edits(space: Mapping[str, Hyperparameter], edits: Mapping[str, Any] | None) -> dict[str, Hyperparameter]:
    """The space with each edit applied; SpaceError names the first edit that cannot apply."""
    if edits is not None and not isinstance(edits, Mapping):
        raise SpaceError(f"a search space edit must map hyperparameter names to edits, got {type(edits).__name__}")
    edited = dict(space)
    for name, edit in (edits or {}).items():
        if name not in space:
            raise SpaceError(
                f"unknown hyperparameter {name!r}: this search has {', '.join(space)}", name
            )
        edited[name] = narrow(space[name], edit)
    return edited


def narrow(hp: Hyperparameter, edit: Any) -> Hyperparameter:
    """`hp` narrowed by one edit: a value, {"min": a, "max": b} or a list of choices."""
    if isinstance(edit, Mapping):
        return _narrow_range(hp, edit)
    if isinstance(edit, list | tuple):
        return _keep_choices(hp, edit)
    value = _coerce(hp, edit)
    if hp.kind in RANGE_KINDS:
        _require_inside(hp, value, value)
        return replace(hp, low=value, high=value, default=value)
    _require_among(hp, [value])
    return replace(hp, choices=(value,), default=value)


def _narrow_range(hp: Hyperparameter, edit: Mapping) -> Hyperparameter:
    if hp.kind not in RANGE_KINDS:
        raise SpaceError(f"{hp.name} is a choice ({hp.describe()}): give one value or a list of choices, not a range", hp.name)
    if set(edit) != {"min", "max"}:
        raise SpaceError(f"a range for {hp.name} needs exactly the keys min and max, got {', '.join(map(str, edit)) or 'none'}", hp.name)
    low, high = _coerce(hp, edit["min"]), _coerce(hp, edit["max"])
    if low > high:
        raise SpaceError(f"{hp.name}: min {describe_value(low)} is above max {describe_value(high)}; swap them", hp.name)
    _require_inside(hp, low, high)
    return replace(hp, low=low, high=high, default=_default_within(hp, low, high))


def _default_within(hp: Hyperparameter, low: float, high: float) -> float:
    """The default moved into [low, high], onto the range's grid (Keras Tuner draws from low in steps)."""
    value = min(max(hp.default, low), high)
    if hp.step:
        value = min(round(low + round((value - low) / hp.step) * hp.step, 12), high)  # 0.30000000000000004 is 0.3
    return int(value) if hp.kind == INT else value


def _keep_choices(hp: Hyperparameter, edit: list | tuple) -> Hyperparameter:
    if hp.kind in RANGE_KINDS:
        raise SpaceError(f"{hp.name} is a range ({hp.describe()}): give min:max or one value, not a list", hp.name)
    if not edit:
        raise SpaceError(f"{hp.name}: the list of choices is empty; keep at least one of {', '.join(map(describe_value, hp.choices))}", hp.name)
    given = [_coerce(hp, value) for value in edit]
    _require_among(hp, given)
    kept = [choice for choice in hp.choices if choice in given]  # in the default order, once each
    return replace(hp, choices=tuple(kept), default=hp.default if hp.default in kept else kept[0])


def _require_inside(hp: Hyperparameter, low: float, high: float) -> None:
    below = low < hp.low and not math.isclose(low, hp.low)
    above = high > hp.high and not math.isclose(high, hp.high)
    if below or above:
        given = describe_value(low) if low == high else f"{describe_value(low)} to {describe_value(high)}"
        raise SpaceError(
            f"{hp.name}: {given} is outside its default range {describe_value(hp.low)} to {describe_value(hp.high)}; "
            "an edit can only narrow the range", hp.name,
        )


def _require_among(hp: Hyperparameter, values: Iterable) -> None:
    strangers = [v for v in values if v not in hp.choices]
    if strangers:
        raise SpaceError(
            f"{hp.name}: {', '.join(map(describe_value, strangers))} is not among its choices {', '.join(map(describe_value, hp.choices))}", hp.name
        )


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _coerce(hp: Hyperparameter, value: Any) -> Any:
    """`value` (from JSON, or text from --hp) as this hyperparameter's type, or a SpaceError."""
    wanted = hp.kind
    if hp.kind == CHOICE:
        wanted = INT if all(isinstance(c, int) for c in hp.choices) else "text"
    try:
        if wanted == BOOLEAN:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in (*_TRUE, *_FALSE):
                return value.strip().lower() in _TRUE
        elif isinstance(value, bool) or value is None or isinstance(value, Mapping | list | tuple):
            pass  # true/false, null or a nested value where a number or a word belongs
        elif wanted == "text":
            return str(value).strip()
        elif wanted == FLOAT:
            number = float(value)
            if math.isfinite(number):
                return number
        else:
            number = float(value)
            if number.is_integer():
                return int(number)
    except ValueError:
        pass
    expected = {BOOLEAN: "true or false", FLOAT: "a number", INT: "a whole number", "text": "a word"}[wanted]
    raise SpaceError(f"{hp.name} takes {expected}, got {value!r}", hp.name)


def canonical_edits(space: Mapping[str, Hyperparameter], edits: Mapping[str, Any] | None) -> dict[str, Any]:
    """The edits as saved in settings.json: typed values, a fixed value as one value, no-op edits dropped."""
    edited = apply_edits(space, edits)
    saved = {}
    for name in edits or {}:
        hp = edited[name]
        if hp == space[name]:
            continue
        if hp.fixed:
            saved[name] = hp.only_value
        elif hp.kind in RANGE_KINDS:
            saved[name] = {"min": hp.low, "max": hp.high}
        else:
            saved[name] = list(hp.choices)
    return saved


# --------------------------------------------------------------------------
# The CLI's forms
# --------------------------------------------------------------------------


def parse_hp_option(text: str) -> tuple[str, Any]:
    """One `--hp` option: `name=value`, `name=min:max` or `name=a,b,c` (values still text)."""
    name, sign, value = text.partition("=")
    name = name.strip()
    if not sign or not name:
        raise SpaceError(f"--hp {text!r} needs the form name=value, name=min:max or name=a,b,c")
    if "," in value or not value.strip():
        return name, [part.strip() for part in value.split(",") if part.strip()]
    if ":" in value:
        low, _, high = value.partition(":")
        return name, {"min": low.strip(), "max": high.strip()}
    return name, value.strip()


def parse_hp_options(texts: Iterable[str]) -> dict[str, Any]:
    """Repeated `--hp` options as one edit mapping; a name given twice is refused."""
    edits: dict[str, Any] = {}
    for text in texts:
        name, edit = parse_hp_option(text)
        if name in edits:
            raise SpaceError(f"--hp {name} is given twice: give each hyperparameter once", name)
        edits[name] = edit
    return edits


def read_edits_file(path: str | Path) -> dict[str, Any]:
    """The edits of a `--space FILE.json`: a JSON object of hyperparameter name -> edit."""
    path = Path(path).expanduser()
    try:
        edits = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpaceError(f"search space file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SpaceError(f"search space file {path} is not readable JSON ({error})") from None
    if not isinstance(edits, dict):
        raise SpaceError(f"search space file {path} must hold a JSON object such as "
                         '{"learning_rate": {"min": 0.0001, "max": 0.001}, "dense_units": [64, 128], "dropout": 0.2}')
    return edits


# --------------------------------------------------------------------------
# Keras Tuner
# --------------------------------------------------------------------------


def draw(hp: keras_tuner.HyperParameters, definition: Hyperparameter) -> Any:
    """Register `definition` with Keras Tuner (first time) and return this trial's value of it."""
    if definition.fixed:
        return hp.Fixed(definition.name, definition.only_value)
    if definition.kind == FLOAT:
        return hp.Float(definition.name, definition.low, definition.high, step=definition.step,
                        sampling="log" if definition.log else "linear", default=definition.default)
    if definition.kind == INT:
        return hp.Int(definition.name, int(definition.low), int(definition.high), step=int(definition.step or 1),
                      default=int(definition.default))
    if definition.kind == BOOLEAN and set(definition.choices) == {True, False}:
        return hp.Boolean(definition.name, default=definition.default)
    return hp.Choice(definition.name, list(definition.choices), default=definition.default)


def registered_in_advance(definitions: Iterable[Hyperparameter]) -> keras_tuner.HyperParameters:
    """A Keras Tuner space holding these definitions, to pass to a tuner as `hyperparameters`.

    Keras Tuner keeps the first definition of each name, so the model builders' own draws of these
    names then return values from the edited ranges and choices.
    """
    import keras_tuner

    hp = keras_tuner.HyperParameters()
    for definition in definitions:
        draw(hp, definition)
    return hp


def max_conv_blocks(image_size: int) -> int:
    """Each block halves the image; stop while at least 4x4 pixels are left."""
    return max(1, min(5, int(math.log2(image_size)) - 2))
