"""Network architectures by name: the one place a checkpoint's ``architecture`` string is resolved."""
from __future__ import annotations

import inspect
from typing import Any, TypeVar

from torch import nn

from svreg_core.errors import InputError
from svreg_core.models.base import SPRNetwork

#: Registered architectures, name -> class (filled by :func:`register_architecture`).
ARCHITECTURES: dict[str, type[SPRNetwork]] = {}

_N = TypeVar("_N", bound=type[SPRNetwork])


def register_architecture(cls: _N) -> _N:
    """Class decorator adding an :class:`SPRNetwork` subclass to :data:`ARCHITECTURES` under ``cls.architecture``.

    Raises:
        ValueError: another class is already registered under that name.
    """
    name = cls.architecture
    if ARCHITECTURES.get(name, cls) is not cls:
        raise ValueError(f"architecture {name!r} is already registered by {ARCHITECTURES[name].__qualname__}")
    ARCHITECTURES[name] = cls
    return cls


def _registered(architecture: str) -> type[SPRNetwork]:
    """The class of a registered architecture; :class:`InputError` naming the known ones."""
    cls = ARCHITECTURES.get(architecture)
    if cls is None:
        raise InputError(f"unknown network architecture {architecture!r} "
                         f"(known: {', '.join(sorted(ARCHITECTURES)) or 'none'})")
    return cls


def architecture_options(architecture: str) -> frozenset[str]:
    """The configuration keys a registered architecture accepts (its keyword-only constructor arguments).

    Raises:
        InputError: unknown architecture.
    """
    return frozenset(name for name, p in inspect.signature(_registered(architecture).__init__).parameters.items()
                     if p.kind is inspect.Parameter.KEYWORD_ONLY)


def architecture_class(architecture: str, config: dict[str, Any] | None = None) -> type[SPRNetwork]:
    """The class of a registered architecture, checked to accept every key of ``config`` (quick: builds nothing;
    the values are checked by :func:`build_model`).

    Raises:
        InputError: unknown architecture or unknown configuration keys.
    """
    cls = _registered(architecture)
    accepted = architecture_options(architecture)
    unknown = sorted(set(config or {}) - accepted)
    if unknown:
        raise InputError(f"unknown configuration key(s) {', '.join(unknown)} for architecture {architecture!r} "
                         f"(accepted: {', '.join(sorted(accepted))})")
    return cls


def build_model(architecture: str, config: dict[str, Any] | None = None) -> SPRNetwork:
    """A freshly initialised network of a registered architecture.

    Args:
        architecture: a key of :data:`ARCHITECTURES`, e.g. ``"unet-spr"``.
        config: keyword arguments of that architecture (missing ones take their defaults).

    Raises:
        InputError: unknown architecture, unknown configuration keys or invalid values.
    """
    cls = architecture_class(architecture, config)
    config = dict(config or {})
    try:
        return cls(**config)
    except (TypeError, ValueError) as exc:
        raise InputError(f"invalid configuration for architecture {architecture!r}: {exc}") from None


def count_parameters(model: nn.Module) -> int:
    """Number of trainable (``requires_grad``) scalar parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
