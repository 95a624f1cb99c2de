"""Learned SPR networks: architectures, the registry that names them, and checkpoints.

Importing this package registers the architectures ``"unet-spr"`` (:mod:`svreg_core.models.unet`) and
``"transmorph-tvf-spr"`` (:mod:`svreg_core.models.transmorph`); either can be a HyperSPR network
conditioned on the regularisation codes (:mod:`svreg_core.models.film`).
"""
from svreg_core.models.base import SPRNetwork
from svreg_core.models.checkpoint import (
    ModelInfo,
    load_checkpoint,
    model_summary,
    read_model_info,
    save_checkpoint,
)
from svreg_core.models.film import CodeRanges
from svreg_core.models.registry import ARCHITECTURES, build_model, count_parameters, register_architecture
from svreg_core.models.transmorph import TransMorphTVFSPR
from svreg_core.models.unet import UNetSPR

__all__ = ["ARCHITECTURES", "CodeRanges", "ModelInfo", "SPRNetwork", "TransMorphTVFSPR", "UNetSPR", "build_model",
           "count_parameters", "load_checkpoint", "model_summary", "read_model_info", "register_architecture",
           "save_checkpoint"]
