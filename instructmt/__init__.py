"""instructmt: instruction-tuned multi-task training and held-out-task evaluation."""

__version__ = "0.1.0"
