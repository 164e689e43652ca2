"""The served model: what a worker runs for every batch, and what ``evaluate`` and the
promotion gate score as deployed.

- ``model.py``: ``ServedModel``, the lists (fold-in candidates, the online sources, the
  ranker), user state applied by ``apply``, a batch planned by ``plan_step``, and the item
  side learned only through ``learn(delta)``;
- ``signals.py``: ``StreamSignals``, the item side learned from the stream alone (trending,
  sequential rules, co-visitation, session kNN, the ranker);
- ``shared.py``: the item side as a replicated log (``ItemDelta``, its wire form, snapshots).

``ServedModel`` is imported on first use, so ``model_core.served.shared`` alone loads no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model_core.served.model import ServedModel

__all__ = ["ServedModel"]


def __getattr__(name: str) -> Any:
    if name == "ServedModel":
        value = importlib.import_module("model_core.served.model").ServedModel
        globals()[name] = value
        return value
    raise AttributeError(f"module 'model_core.served' has no attribute {name!r}")
