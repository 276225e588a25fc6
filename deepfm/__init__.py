"""DeepFM click-through-rate pipeline: Spark preprocessing, Horovod training, Delta scoring.

Layers, each importing only the ones before it: ``core`` (feature spec, metrics, files),
``models``, ``prep`` (data preparation on Spark), ``training``, ``serving``, ``evaluation``,
``ops`` (pipeline, Spark session, doctor) and ``cli`` (the ``deepfm`` command).
"""

from pathlib import Path

__version__ = "0.1.0"

# The file ``spark-submit`` runs the jobs with (``python -m deepfm``'s own entry).
ENTRY_POINT = str(Path(__file__).parent / "__main__.py")
