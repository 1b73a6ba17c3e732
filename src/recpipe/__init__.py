"""recpipe: a reproducible recommender-system pipeline on TensorFlow (DVC + Hydra + MLflow)."""

import os

# TFRS needs Keras 2 (tf-keras). This must be set before TensorFlow is first imported anywhere.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
