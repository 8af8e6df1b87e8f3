"""The demo data set shipped in the repository (`demo_data/chest_xray/`), used when no data folder is set.

130 real X-rays from the public data set (Kermany, Zhang and Goldbaum 2018, CC BY 4.0; see
`demo_data/README.md` and `demo_data/LICENSE.txt`), chosen by patient with `tools/make_demo_set.py`:
a train part and a test part that share no patient, both pneumonia kinds, shrunk to 128 px.
Enough to try every page and finish a small search in under a minute; far too few to judge a model.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # core/data/demo.py -> the repository
DEMO_DIR = REPO / "demo_data" / "chest_xray"
FULL_DATA_DIR = "data/chest_xray"  # where the full download is looked for first (relative to the working folder)
FULL_IMAGES = "5,863"  # images in the Kaggle download (train, val and test)
IMAGE_PX = 128
# A search on the demo set from the Tune form: small enough to finish in under a minute on 2 cores.
SEARCH_DEFAULTS = {"trials": 3, "epochs": 3, "custom_cnn_image_size": IMAGE_PX}


def available() -> bool:
    return (DEMO_DIR / "train").is_dir()


def default_data_dir() -> str:
    """The data folder when none is set: CXR_DATA_DIR, else data/chest_xray if it exists, else the demo set."""
    configured = os.environ.get("CXR_DATA_DIR")
    if configured:
        return configured
    if Path(FULL_DATA_DIR).exists() or not available():
        return FULL_DATA_DIR
    return str(DEMO_DIR)


def is_demo(folder: str | os.PathLike | None) -> bool:
    """True when `folder` is the demo set (or a folder inside it)."""
    if not folder:
        return False
    try:
        path = Path(os.path.abspath(Path(folder).expanduser())).resolve()
    except OSError:
        return False
    demo = DEMO_DIR.resolve()
    return path == demo or demo in path.parents


def describe() -> str:
    """How the demo set differs from the full data, in one paragraph (Markdown)."""
    return (
        f"This is the **demo set** shipped with the tool: 130 real chest X-rays (80 for training, 50 for test, "
        f"half normal, pneumonia half bacterial and half viral) from the public data set, chosen by patient and "
        f"shrunk to {IMAGE_PX} px. The full data set has {FULL_IMAGES} X-rays at full resolution (most over "
        "1,000 px), a test set of 624 and far more patients. The demo set is for trying the tool: a search finishes in under a minute, but its "
        "metrics rest on a few dozen images and say little about a model."
    )
