"""Evidence from saved predictions: statistics with intervals and paired tests, multi-class
metrics, the stress test, validation against test, and runs side by side. Numbers only: no
models, no words (`core.reporting.wording`)."""
