"""Evidence from saved predictions: statistics with intervals and paired tests, multi-class
metrics, the stress test, validation against test, and runs side by side; and evidence on
heatmaps without lesion masks (faithfulness curves, where the heat sits, a synthetic opacity), the
model reached only through a `score` callable. Numbers only: no models, no words
(`core.reporting.wording`)."""
