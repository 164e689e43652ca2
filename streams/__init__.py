"""freshrec's streaming side: everything that touches Kafka.

Services that consume the published lists need two names::

    from streams import RecommendationClient, load_settings
    with RecommendationClient(load_settings({"brokers": "kafka:9092"})) as client:
        rec = client.wait_for(lambda r: r.user_id == "u1", timeout=10)
"""

from streams.codec import Recommendation
from streams.errors import BrokerUnavailableError
from streams.recommendation_client import RecommendationClient
from streams.settings import Settings, load_settings

__all__ = ["BrokerUnavailableError", "Recommendation", "RecommendationClient", "Settings", "load_settings"]
