"""Model hyper-parameters: frozen, validated dataclasses saved with every model."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from model_core.errors import ConfigError
from model_core.events import Event, EventType

__all__ = ["EventWeights", "ALSConfig", "FoldInConfig"]


@dataclass(frozen=True)
class EventWeights:
    """How much each event type says about a user's taste (before confidence scaling)."""

    view: float = 1.0
    click: float = 1.0
    add_to_cart: float = 3.0
    purchase: float = 5.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not v >= 0:
                raise ConfigError(f"event weight {f.name}={v!r} must be >= 0")

    def of(self, event: Event) -> float:
        """The event's weight: its explicit ``weight`` (e.g. a rating) or its type's."""
        if event.weight is not None:
            return event.weight
        return float(getattr(self, event.type.value))

    def of_type(self, kind: EventType) -> float:
        return float(getattr(self, kind.value))

    @classmethod
    def parse(cls, text: str) -> "EventWeights":
        """Parse ``view=1,cart=3,purchase=5`` (type aliases accepted)."""
        from model_core.events import parse_event_type

        values: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, num = part.partition("=")
            if not sep:
                raise ConfigError(f"event weight {part!r} is not NAME=NUMBER")
            try:
                values[parse_event_type(name).value] = float(num)
            except ValueError:
                raise ConfigError(f"event weight {part!r}: {num!r} is not a number") from None
            except Exception as exc:  # BadInputError from parse_event_type
                raise ConfigError(f"event weight {part!r}: {exc}") from None
        return cls(**values)


@dataclass(frozen=True)
class ALSConfig:
    """Implicit-feedback ALS (iALS).

    Confidence of a (user, item) cell with summed event weight ``w`` is
    ``c = 1 + alpha * w`` (``confidence="linear"``) or
    ``c = 1 + alpha * log1p(w / epsilon)`` (``confidence="log"``).
    """

    factors: int = 64
    regularization: float = 0.05
    alpha: float = 30.0
    iterations: int = 15
    cg_steps: int = 3
    confidence: Literal["linear", "log"] = "linear"
    epsilon: float = 1.0
    weights: EventWeights = field(default_factory=EventWeights)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.factors < 1:
            raise ConfigError(f"factors={self.factors} must be >= 1")
        if self.regularization < 0:
            raise ConfigError(f"regularization={self.regularization} must be >= 0")
        if self.alpha < 0:
            raise ConfigError(f"alpha={self.alpha} must be >= 0")
        if self.iterations < 1:
            raise ConfigError(f"iterations={self.iterations} must be >= 1")
        if self.cg_steps < 0:
            raise ConfigError(f"cg_steps={self.cg_steps} must be >= 0 (0 = exact Cholesky)")
        if self.confidence not in ("linear", "log"):
            raise ConfigError(f"confidence={self.confidence!r} must be 'linear' or 'log'")
        if self.epsilon <= 0:
            raise ConfigError(f"epsilon={self.epsilon} must be > 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ALSConfig":
        d = dict(d)
        d["weights"] = EventWeights(**d.get("weights", {}))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class FoldInConfig:
    """How a user's recent history becomes that user's embedding.

    A user keeps the last ``history_size`` distinct items. Each event's weight
    decays with event-time age (relative to the user's newest event) by
    ``0.5 ** (age / half_life_s)`` and with recency rank (0 = newest item) by
    ``position_decay ** rank``; ``half_life_s=0`` turns time decay off.
    """

    history_size: int = 50
    half_life_s: float = 3600.0
    position_decay: float = 0.5

    def __post_init__(self) -> None:
        if self.history_size < 1:
            raise ConfigError(f"history_size={self.history_size} must be >= 1")
        if self.half_life_s < 0:
            raise ConfigError(f"half_life_s={self.half_life_s} must be >= 0 (0 = no time decay)")
        if not 0 < self.position_decay <= 1:
            raise ConfigError(f"position_decay={self.position_decay} must be in (0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FoldInConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
