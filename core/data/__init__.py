"""Data: a chest X-ray folder, its patients and splits, its pixels, the augmentation, and the tasks
(which images and labels a model learns)."""
