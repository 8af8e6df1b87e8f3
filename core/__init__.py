"""The library behind the dashboard and the CLI. No Streamlit in here.

Its packages follow the data's way through it, bottom layer first; a module imports only from its
own layer or below (checked by `lint-imports`, pyproject.toml):

- `files`, `console`: writing files whole, locks, CSV/JSON; what the command line prints.
- `data/`: data folders, patients and splits, pixels, augmentation, the tasks.
- `runs/`: the run folder, the only channel between a search and the pages.
- `models/` and `evidence/`: the networks; the statistics read from saved predictions.
- `inference/`: scoring, ensembles, explanations and unusual images, for any kind of run.
- `search/` and `reporting/`: a Keras Tuner search end to end; words, figures, report, model card.
- `workflows/`: chains of runs (repeat, the recipe).
- `jobs`, `cli`: background processes; the command line.
"""
