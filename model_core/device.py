"""Device choice, made once by whoever constructs a model object (never at import)."""

from __future__ import annotations

import torch

from model_core.errors import ConfigError

__all__ = ["resolve_device", "cuda_available"]


def cuda_available() -> bool:
    """True when torch sees at least one CUDA device."""
    return bool(torch.cuda.is_available())


def resolve_device(device: str = "auto") -> str:
    """Resolve ``auto|cpu|cuda`` (or ``cuda:N``) to a concrete torch device string."""
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device == "cuda" or device.startswith("cuda:"):
        if not cuda_available():
            raise ConfigError(
                f"device={device!r} asked for, but torch sees no CUDA device "
                "(install the CUDA build of torch, or use --device cpu)"
            )
        return device
    raise ConfigError(f"device={device!r} is not one of auto, cpu, cuda")
