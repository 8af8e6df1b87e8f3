"""Saved runs: the run folder and its files, the progress and trials a search writes into it, and
the catalog (notes, tags, archive, delete). The only channel between a search and the pages."""
