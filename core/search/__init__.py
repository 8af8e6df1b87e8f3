"""A Keras Tuner search end to end: its settings and presets, its cost, its data, its input kinds
(pixels, cached features, cached activations), the hypermodel and tuner, the loop, and
searches over several machines."""
