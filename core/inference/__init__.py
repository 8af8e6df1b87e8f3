"""Saved runs put to use: scoring images, ensembles, explanations and unusual-image flags, with one
entry point for any kind of run."""
