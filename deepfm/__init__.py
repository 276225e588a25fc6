"""DeepFM click-through-rate pipeline: Spark preprocessing, Horovod training, Delta scoring."""

__version__ = "0.1.0"
