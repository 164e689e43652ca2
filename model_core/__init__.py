"""freshrec's model core: iALS, incremental fold-in, FAISS retrieval, evaluation.

No Kafka or Faust import lives here: the package takes events, arrays and plain
ids, and ``streams`` does all I/O with brokers.

The public names are imported on first use (PEP 562): a process that needs only
the errors, events or config (``freshrec serve``, ``tail``, the CLI's parser) does
not load torch and FAISS (about 200 MB of RSS and two seconds of start-up).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from model_core.config import ALSConfig, EventWeights, FoldInConfig
from model_core.errors import BadInputError, ConfigError, FreshrecError, ModelIncompatibleError
from model_core.events import Event, EventType

if TYPE_CHECKING:
    from model_core.als import ALSModel, train_als
    from model_core.served.model import ServedModel
    from model_core.state import UserHistory

__all__ = [
    "ALSConfig",
    "ALSModel",
    "BadInputError",
    "ConfigError",
    "Event",
    "EventType",
    "EventWeights",
    "FoldInConfig",
    "FreshrecError",
    "ModelIncompatibleError",
    "ServedModel",
    "UserHistory",
    "train_als",
]

_LAZY = {"ALSModel": "model_core.als", "train_als": "model_core.als", "ServedModel": "model_core.served.model",
         "UserHistory": "model_core.state"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'model_core' has no attribute {name!r}")
