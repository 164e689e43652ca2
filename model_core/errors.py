"""The exceptions a user can act on.

::

    FreshrecError                 root: everything freshrec raises on purpose
    ├── BadInputError             a file, row or event that cannot be read
    ├── ConfigError               a flag, setting or hyper-parameter out of range
    └── ModelIncompatibleError    a model directory that is missing, corrupt or
                                  does not fit the index / history it meets

``streams`` adds its own subclasses (broker unreachable) under the same root.
"""

from __future__ import annotations


class FreshrecError(Exception):
    """Root of every error freshrec raises on purpose."""


class BadInputError(FreshrecError):
    """Input data (a log file, a row, an event) cannot be read."""


class ConfigError(FreshrecError):
    """A configuration value, flag or hyper-parameter is invalid."""


class ModelIncompatibleError(FreshrecError):
    """A saved model is missing, corrupt, or incompatible with what uses it."""
