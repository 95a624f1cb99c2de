"""The tiny ``unet-spr`` checkpoint of the engine and Slicer-extension tests (one builder for both trees;
each tree's ``conftest.py`` puts this folder on ``sys.path``).

Real checkpoints saved by the engine: random weights (seeded, without touching the global generators)
that give a visible deformation, which the codes (α′, λ_max) of a hyper model strongly modulate. The
velocity head's weights are large (standard deviation 2) because a registration averages the two
directions' predictions, ``(v(f, m) − v(m, f))/2``, which mostly cancel for a random network: about 10x
smaller than one direction's (``RegistrationParameters.symmetric_prediction``).
"""
from __future__ import annotations

from pathlib import Path

#: Code ranges of the hyper test models.
HYPER_RANGES = {"alpha_prime": [0.05, 0.5], "lambda_max": [0.5, 10.0]}


def tiny_checkpoint(folder: Path, name: str, hyper: dict | None, *, spacing_mm: float, similarity: str) -> Path:
    """Save a 4-feature ``unet-spr`` (a hyper model over ``hyper`` ranges, else plain) as ``folder/name``
    with network grid ``spacing_mm``, ``similarity``, own codes α′ 0.175, λ_max 1; return its folder."""
    import torch

    from svreg_core.models import ModelInfo, build_model, save_checkpoint

    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = build_model("unet-spr", {"encoder_features": [4, 4], "decoder_features": [4, 4, 4],
                                       "lambda_features": [4], **({"hyper": hyper} if hyper else {})})
        with torch.no_grad():
            net.velocity_head.weight.normal_(0.0, 2.0)
            if hyper:
                net.film.mlp[-1].weight.normal_(0.0, 1.0)
    info = ModelInfo(architecture=net.architecture, config=net.config, network_spacing_mm=spacing_mm,
                     size_multiple=net.size_multiple, normalization="robust_normalize", similarity=similarity,
                     lncc_window=5, prior="beta", alpha_prime=0.175, lambda_max=1.0, spr=True, integration_steps=5,
                     svreg_version="test", training={"data": "none (test net)"}, name=name)
    return save_checkpoint(folder / name, net, info)
