"""Presets: named search settings a user can start with one click (Tune page) or one command.

Each preset is a set of `settings.SearchSettings` fields; anything it does not name keeps the
setting's default. They were chosen on the validation split (see docs/measurements.md, "On the official test split", for
how each one did on the external test split, measured after the choice).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields

from core.models import families
from core.search import cost
from core.search.settings import SearchSettings


@dataclass(frozen=True)
class Preset:
    name: str
    label: str
    description: str
    settings: dict = field(default_factory=dict)  # SearchSettings fields

    @property
    def title(self) -> str:
        """The preset's name with its estimated time on the reference data (`estimate_s`)."""
        return f"{self.label} ({cost.about(self.estimate_s())} on 2 cores)"

    def estimate_s(self, n_images: int | None = None, n_train: float | None = None, n_val: float | None = None) -> float:
        """The one estimate (`cost.estimate_search_s`) of the preset's search from an empty cache, on
        `n_images` (default: the data `cost.MEASURED` was measured on, with its split)."""
        if n_images is None:
            n_images, n_train, n_val = (cost.MEASURED_DATA[key] for key in ("images", "train", "val"))
        s = self.every_setting()
        views = s["augment_views"] if s["augment"] != "off" else 0
        return cost.estimate_search_s(s["family"], s["mode"], s["image_size"], s["trials"], s["epochs"], n_images,
                                      activation_cache=s["activation_cache"], views=views, n_train=n_train, n_val=n_val)

    def command(self, data_dir: str = "DIR") -> str:
        """The same search as one `python -m core tune` command."""
        return f"python -m core tune --data {data_dir} --preset {self.name}"

    def every_setting(self) -> dict:
        """Every setting of the search the preset starts: its own, over the search's defaults
        (`SearchSettings`), with the input size resolved to the family's default. What a form
        shows when the preset is chosen, so no caller keeps a copy of the defaults."""
        values = {f.name: f.default for f in fields(SearchSettings) if f.default is not MISSING}
        values.update(self.settings)
        values["image_size"] = values["image_size"] or families.FAMILIES[values["family"]].default_image_size
        return values

    def full_command(self, data_dir: str = "DIR") -> str:
        """The same search with every setting spelled out."""
        options = " ".join(f"--{key.replace('_', '-')} {value}" for key, value in self.settings.items())
        return f"python -m core tune --data {data_dir} {options}"


PRESETS = {
    p.name: p
    for p in (
        Preset(
            "quick",
            "Quick",
            "MobileNetV2 with ImageNet weights, its top blocks fine-tuned on cached activations with medium augmentation "
            "(one cached view per image): 1 trial of 3 epochs.",
            {"family": "mobilenet", "mode": "finetune", "trials": 1, "epochs": 3, "augment": "medium", "augment_views": 1},
        ),
        Preset(
            "recommended",
            "Recommended",
            "MobileNetV2 with ImageNet weights, its top blocks fine-tuned on cached activations with strong augmentation "
            "(3 cached views per image): 4 trials of 6 epochs.",
            {"family": "mobilenet", "mode": "finetune", "trials": 4, "epochs": 6, "augment": "strong", "augment_views": 3},
        ),
    )
}


DEFAULT = "quick"  # what the Tune form starts from on real data


def preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}") from None
