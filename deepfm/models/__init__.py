"""CTR models of the DeepFM paper: layers, the model zoo, their optimizers, typed configs, bundles.

Input contract: ``cat [B, S]`` long indices (0 = missing/OOV; -1 = an unused slot of a
multi-valued field) in ``FeatureSpec.categorical_columns`` order, and ``num [B, n_numeric]`` float
(already transformed) in ``numeric_fields`` order; output: logits ``[B]``.
"""

from deepfm.models.config import ModelConfig, ModelDefaults
from deepfm.models.optim import Optimizers, make_optimizers, split_sparse_parameters
from deepfm.models.zoo import MODEL_BUILDERS, CTRModel, build_model, build_model_for_spec, model_names

__all__ = [
    "MODEL_BUILDERS",
    "CTRModel",
    "ModelConfig",
    "ModelDefaults",
    "Optimizers",
    "build_model",
    "build_model_for_spec",
    "make_optimizers",
    "model_names",
    "split_sparse_parameters",
]
