"""The only module that reads the environment.

Every setting has a default, a ``FRESHREC_*`` variable and (where the CLI has
one) a flag; flags win over variables, variables over defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

from model_core.errors import ConfigError

__all__ = ["Settings", "load_settings"]


@dataclass(frozen=True)
class Settings:
    """Process-wide settings (model hyper-parameters live with the model)."""

    device: str = "auto"
    """torch/FAISS device: auto, cpu or cuda (FRESHREC_DEVICE)."""
    log_level: str = "INFO"
    """Python logging level (FRESHREC_LOG_LEVEL)."""
    progress: bool = True
    """Progress bars on long work when stderr is a terminal (FRESHREC_PROGRESS=0 to hide)."""

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"FRESHREC_DEVICE / --device {self.device!r} must be auto, cpu or cuda")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"FRESHREC_LOG_LEVEL {self.log_level!r} must be DEBUG, INFO, WARNING or ERROR")

    def describe(self) -> str:
        return ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))


def _env_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{text!r} is not a boolean (use 1/0, true/false)")


def load_settings(overrides: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Defaults, then ``FRESHREC_*`` variables, then non-None ``overrides`` (flags)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(Settings):
        raw = env.get(f"FRESHREC_{f.name.upper()}")
        if raw is not None:
            values[f.name] = _env_bool(raw) if f.type in (bool, "bool") else raw
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return Settings(**values)
