"""Model families: the registry a search, the Tune page and the cost estimate read.

A family is one entry in `FAMILIES`: its default and smallest input size, its backbone (an entry in
`core.models.backbones.ARCHITECTURES`), its cost per image and the hint the Tune page shows. The
command line, the Tune page, the cost estimate (`core.search.cost`), the settings check
(`core.search.settings`) and the tests read that entry, so a new family is one entry here
(docs/architecture.md, "Where to add things").
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from core.models.backbones import ARCHITECTURES, MOBILENET_VERSIONS, BackboneSpec

if TYPE_CHECKING:  # Keras (and TensorFlow) load on first use: pages that only list runs stay light
    pass

MODES = ("frozen", "finetune")
# The hybrid's stems: a MobileNet version, or any other ImageNet backbone with a default cut
HYBRID_STEMS = {**MOBILENET_VERSIONS, **{name: name for name in ("densenet121", "inception_v3", "xception")}}


# --------------------------------------------------------------------------
# Families
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Cost:
    """What a search on a family costs, per image at the family's default input size.

    Milliseconds on the reference machine (2 x86-64 cores; docs/measurements.md, "Benchmarks"):
    `core.search.cost.estimate_search_s` turns them into a time estimate before a search starts.
    """

    frozen_pass_ms: float = 0.0  # backbone pass through the inference engine, decode included
    # Keras train step of the whole backbone with its top layers unfrozen (no activation cache),
    # rounded up since the search also tries deeper unfreezing
    finetune_step_ms: float = 0.0
    bottom_pass_ms: float = 0.0  # cut-point fine-tuning: one pass below the default cut
    top_step_ms: float = 0.0  # cut-point fine-tuning: a train step of the top on cached activations
    # cut-point fine-tuning: an inference pass of the top and head on cached activations (the stress test of a
    # backbone and cut already stress-tested: core.search.activations.stressed_activations); 0: not measured
    top_pass_ms: float = 0.0
    scratch_step_ms: float = 0.0  # trained from scratch: a train step, mid-size hyperparameters


@dataclass(frozen=True)
class Family:
    """A searchable model family: everything the search, the Tune page and the cost estimate need.

    A transfer family names its backbone `architecture` (with `versions` to choose from, if any,
    `architecture` being the default one); a family without one is trained from scratch on pixels:
    no backbone, no modes, no weights. The Tune page's version and width lists and the settings
    check read `versions` and `widths` from here.
    """

    name: str
    default_image_size: int
    description: str  # one line, shown in the family list
    hint: str  # what it costs and when to pick it, shown under the family on the Tune page
    cost: Cost
    architecture: str | None = None  # in ARCHITECTURES; None: trained from scratch
    versions: dict[str, str] = field(default_factory=dict, hash=False)  # version -> architecture
    label: str = ""  # the family's name in messages and widget labels ("MobileNet"); default: `name`
    # A hybrid CNN-transformer: the backbone's top above its cut is replaced by a transformer encoder
    # (core.models.transformer) trained on the cut's cached activations: finetune mode only
    hybrid: bool = False
    # A plain ViT: patches of the pixels, not a CNN's activations, feed the transformer encoder;
    # trained from scratch, or from a local weights file of the same shape (no ImageNet ViT here)
    patches: bool = False
    version_label: str = "version"  # what a choice of `versions` is called in labels and messages ("stem" for the hybrid)

    @property
    def transfer(self) -> bool:
        return self.architecture is not None

    @property
    def transformer(self) -> bool:
        """Whether its models end in a transformer encoder (`core.models.transformer`): hybrid or ViT."""
        return self.hybrid or self.patches

    @property
    def modes(self) -> tuple[str, ...]:
        """The transfer modes it trains in (() when trained from scratch)."""
        if not self.transfer:
            return ()
        return ("finetune",) if self.hybrid else MODES

    @property
    def default_mode(self) -> str:
        """The mode a search takes when none is named: "scratch" for a family without a backbone."""
        return self.modes[0] if self.modes else "scratch"

    @property
    def title(self) -> str:
        return self.label or self.name

    @property
    def default_version(self) -> str | None:
        """The version whose architecture is `architecture`; None for a family without versions."""
        return next((v for v, name in self.versions.items() if name == self.architecture), None)

    def widths(self, version: str | None = None) -> tuple[float, ...]:
        """The width multipliers (alpha) the version's backbone comes in; () when it has no width choice.

        Keras refuses other widths, and only these have ImageNet weights.
        """
        if not self.transfer:
            return ()
        name = self.versions.get(version or self.default_version, "") if self.versions else self.architecture
        return tuple(ARCHITECTURES[name].widths) if name in ARCHITECTURES else ()

    @property
    def all_widths(self) -> tuple[float, ...]:
        """Every width any version of the family comes in, smallest first (the Tune page's list)."""
        versions = self.versions or {None: self.architecture}
        return tuple(sorted({width for version in versions for width in self.widths(version)}))

    @property
    def min_image_size(self) -> int:
        """The smallest input the family's default backbone accepts (`min_size` for another version)."""
        return self.min_size()

    def min_size(self, version: str | None = None) -> int:
        """The smallest input the version's backbone accepts (32 for a family without one)."""
        if not self.transfer:
            return 32
        name = self.versions.get(version or self.default_version, self.architecture) if self.versions else self.architecture
        return max(32, ARCHITECTURES[name].min_image_size)

    def cost_for(self, version: str | None = None) -> Cost:
        """The cost per image at this family's default size, for a version whose backbone another family
        measured (a hybrid's DenseNet121, InceptionV3 or Xception stem): that family's passes and steps,
        scaled to this default size, with this family's own step of the top (the encoder's)."""
        architecture = self.versions.get(version or self.default_version or "") if self.versions else self.architecture
        if architecture is None or architecture == self.architecture:
            return self.cost
        owner = next((f for f in FAMILIES.values() if f.architecture == architecture and not f.hybrid), None)
        if owner is None:  # a version no family measured (MobileNet V1 and V3): this family's own figures
            return self.cost
        scale = (self.default_image_size / owner.default_image_size) ** 2
        own = owner.cost
        return replace(own, frozen_pass_ms=own.frozen_pass_ms * scale, finetune_step_ms=own.finetune_step_ms * scale,
                       bottom_pass_ms=own.bottom_pass_ms * scale, top_step_ms=self.cost.top_step_ms,
                       top_pass_ms=self.cost.top_pass_ms)

    def backbone(self, image_size: int, weights: str, version: str | None = None, alpha: float = 1.0) -> BackboneSpec | None:
        if not self.transfer:
            return None
        name = self.versions[version or self.default_version] if self.versions else self.architecture
        return BackboneSpec(name, image_size, weights, alpha if ARCHITECTURES[name].widths else 1.0)


FAMILIES = {
    f.name: f
    for f in (
        Family(
            "mobilenet", 224, "MobileNet (V2 by default): light ImageNet backbone",
            "Light ImageNet backbone (a few ms per image at 224 px through the inference engine). Frozen: "
            "features are computed once per image and cached, then each trial trains a small head in seconds. "
            "Fine-tuning trains the blocks above a cut on activations cached once per image (with augmented "
            "copies): tens of seconds per epoch on all images at 224 px.",
            # top_step_ms: the recommended recipe's training on 2 idle cores (core.search.cost.MEASURED), as
            # an epoch's parts were timed: 14.6 s of steps over 4,470 cached images, 1 s of validation
            Cost(frozen_pass_ms=2.6, finetune_step_ms=12.0, bottom_pass_ms=2.5, top_step_ms=3.2, top_pass_ms=0.8),
            "mobilenet_v2", MOBILENET_VERSIONS, label="MobileNet",
        ),
        Family(
            "inception_v3", 299, "InceptionV3: the backbone of Kermany et al. (2018)",
            "The paper's backbone, at 299 px about 10× MobileNet's cost per image. Frozen mode is "
            "practical on a CPU (features once, cached); fine-tuning all images takes hours.",
            Cost(frozen_pass_ms=27.0, finetune_step_ms=50.0, bottom_pass_ms=24.0, top_step_ms=12.0),
            "inception_v3",
        ),
        Family(
            "xception", 299, "Xception: a deeper Inception-style ImageNet backbone",
            "Deeper Inception-style backbone at 299 px, similar cost to InceptionV3. Frozen mode is "
            "practical on a CPU; fine-tuning is for a GPU.",
            Cost(frozen_pass_ms=45.0, finetune_step_ms=95.0, bottom_pass_ms=42.0, top_step_ms=10.0),
            "xception",
        ),
        Family(
            "densenet121", 224, "DenseNet121: the CheXNet backbone (Rajpurkar et al., 2017)",
            "The backbone of CheXNet, the usual starting point of chest X-ray work. At 224 px it costs more per "
            "image than InceptionV3 and less than Xception. Frozen mode is practical on a CPU (features once, "
            "cached); fine-tuning the top of its last block works on cached activations, all images take long.",
            # Not measured here yet: placed between InceptionV3 and Xception, where Keras's own CPU
            # timings of the three put it (docs/measurements.md, "Benchmarks")
            Cost(frozen_pass_ms=36.0, finetune_step_ms=75.0, bottom_pass_ms=33.0, top_step_ms=8.0),
            "densenet121",
        ),
        Family(
            "hybrid", 224, "Hybrid CNN-transformer: an ImageNet CNN stem up to its cut, then transformer encoder blocks",
            "The hybrid ViT of Dosovitskiy et al. (2021): an ImageNet CNN, the stem (MobileNetV2 by default; any MobileNet, "
            "DenseNet121, InceptionV3 or Xception), runs once per image up to its cut (MobileNetV2: 14×14 positions at "
            "224 px, cached with augmented copies), and a small transformer encoder trained from scratch reads those "
            "positions as tokens. Fine-tuning mode with the activation cache only; with the MobileNetV2 stem a little more "
            "per epoch than MobileNet fine-tuning, with the others about their own fine-tuning's cost. Its attention layers "
            "can be explained by attention rollout.",
            # Rough timings at 224 px (2 shared cores, default encoder: depth 2, width 128): the joined model through
            # TF Lite 2.8 ms per image (Keras 9.5), a train step on cached activations 6-8 ms; the bottom is
            # MobileNetV2's. Fine-tuning without the cache is refused: its figure is MobileNet's plus the encoder's.
            Cost(frozen_pass_ms=3.0, finetune_step_ms=15.0, bottom_pass_ms=2.5, top_step_ms=7.0),
            "mobilenet_v2", HYBRID_STEMS, label="Hybrid CNN-transformer", hybrid=True, version_label="stem",
        ),
        Family(
            "custom_cnn", 150, "A small CNN trained from scratch",
            "Trains every weight from scratch, so every epoch passes over all training images; "
            "cheap per image, and the cost grows with the square of the input size. No ImageNet weights needed.",
            Cost(scratch_step_ms=8.0),
        ),
        Family(
            "vit", 128, "A plain vision transformer (ViT) trained from scratch on image patches",
            "The ViT of Dosovitskiy et al. (2021): square patches of the X-ray become tokens of a transformer encoder. "
            "No ImageNet ViT weights can be fetched here, so it trains from scratch (or from a .weights.h5 file of the "
            "same shape, --weights FILE); ViTs need far more than 5,000 images to learn from scratch, so expect it to "
            "trail the ImageNet CNNs. Its attention layers can be explained by attention rollout.",
            # a train step per image at 128 px, patch 16, the default encoder (depth 2, width 128), rounded up
            Cost(scratch_step_ms=6.0), label="ViT (from scratch)", patches=True,
        ),
    )
}
