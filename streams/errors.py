"""Errors of the streaming side, under the same root as model_core's.

::

    FreshrecError (model_core.errors)
    └── BrokerUnavailableError   the Kafka cluster (or the embedded broker) cannot be reached or started
"""

from __future__ import annotations

from model_core.errors import BadInputError, ConfigError, FreshrecError, ModelIncompatibleError

__all__ = ["BadInputError", "BrokerUnavailableError", "ConfigError", "FreshrecError", "ModelIncompatibleError"]


class BrokerUnavailableError(FreshrecError):
    """The Kafka brokers cannot be reached, or the embedded broker failed to start."""
