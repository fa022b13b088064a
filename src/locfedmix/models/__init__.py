"""Split models (client lower / server upper) and the client-side auxiliary modules at the cut."""

from locfedmix.models.auxiliary import build_aux_classifier, build_decoder
from locfedmix.models.split import (
    MODELS,
    ModelSpec,
    SplitModel,
    build_split_model,
    default_cut,
    model_names,
    n_blocks,
)

__all__ = [
    "MODELS",
    "ModelSpec",
    "SplitModel",
    "build_aux_classifier",
    "build_decoder",
    "build_split_model",
    "default_cut",
    "model_names",
    "n_blocks",
]
