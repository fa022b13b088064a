"""Split models (client lower / server upper) and the client-side auxiliary modules at the cut."""

from locfedmix.models.auxiliary import build_aux_classifier, build_decoder
from locfedmix.models.custom import Model
from locfedmix.models.cutting import split_at, split_blocks
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
    "Model",
    "ModelSpec",
    "SplitModel",
    "build_aux_classifier",
    "build_decoder",
    "build_split_model",
    "default_cut",
    "model_names",
    "n_blocks",
    "split_at",
    "split_blocks",
]
