"""TopicReader's parameter checks, which run before it connects (no broker needed)."""

from __future__ import annotations

from typing import Any

import pytest

from streams.errors import ConfigError
from streams.reader import Since, TopicReader
from streams.settings import load_settings

SETTINGS = load_settings(environ={}).with_(brokers="127.0.0.1:1")  # nothing listens: never reached


@pytest.mark.parametrize("kwargs", [
    {"until": "forever"},
    {"group": "g", "until": "marker"},
    {"group": "g", "until": "end"},
    {"group": "g", "partitions": [0]},
    {"group": "g", "start": {0: 5}},
    {"group": "g", "start": Since(0.0)},
    {"idle_s": 0},
    {"batch": 0},
])
def test_bad_parameters_are_config_errors_before_any_connection(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        TopicReader(SETTINGS, "t", connect_timeout_s=0.1, **kwargs)
