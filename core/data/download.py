"""Download the public chest X-ray data set (Kermany et al.) from Kaggle with `kagglehub`.

`download_public_dataset()` returns the folder holding `train/`, `val/` and `test/`, ready to
use as the data folder. Every failure (no kagglehub, no network, Kaggle refusing) raises
`DownloadError` with a message that says what to do instead.
"""

from __future__ import annotations

from pathlib import Path

from core.data.folders import DataError, find_data_root

KAGGLE_DATASET = "paultimothymooney/chest-xray-pneumonia"
KAGGLE_URL = "https://www.kaggle.com/datasets/paultimothymooney/chest-xray-pneumonia"
DOWNLOAD_SIZE = "about 2 GB"

MANUAL_STEPS = (
    f"download the zip by hand from {KAGGLE_URL} (on any machine with a browser), copy it here, unpack it, "
    "and set the data folder to the unpacked `chest_xray` folder (the one holding train/ and test/)"
)


class DownloadError(RuntimeError):
    """The public data set could not be downloaded; the message says why and what to do instead."""


def download_public_dataset(dataset: str = KAGGLE_DATASET) -> Path:
    """Download (or reuse kagglehub's cached copy of) the data set; return its data root.

    kagglehub caches downloads under `~/.cache/kagglehub` (or `$KAGGLEHUB_CACHE`), so a second
    call returns at once.
    """
    try:
        import kagglehub
    except ImportError:
        raise DownloadError(
            "the `kagglehub` package is not installed: run `pip install kagglehub` and try again, or " + MANUAL_STEPS
        ) from None
    try:
        path = Path(kagglehub.dataset_download(dataset))
    except Exception as error:  # kagglehub raises many kinds: network, HTTP, auth, disk
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        raise DownloadError(
            f"could not download {dataset} from Kaggle ({type(error).__name__}: {reason}). "
            "Without network access, " + MANUAL_STEPS + ". If Kaggle asks you to sign in, set KAGGLE_USERNAME and "
            "KAGGLE_KEY (from your Kaggle account settings) or run `kagglehub.login()` once."
        ) from None
    try:
        return find_data_root(path)
    except DataError as error:
        raise DownloadError(f"the download in {path} does not look like the chest X-ray data set: {error}") from None
