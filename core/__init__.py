"""The library behind the dashboard and the CLI: chest X-ray data, model families, Keras Tuner
searches, evaluation and statistics, saved runs and background jobs. No Streamlit in here."""
