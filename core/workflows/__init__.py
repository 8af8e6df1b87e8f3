"""Chains of ordinary runs: a run repeated with other seeds, and the recommended recipe."""
