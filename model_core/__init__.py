"""freshrec's model core: iALS, incremental fold-in, FAISS retrieval, evaluation.

No Kafka or Faust import lives here: the package takes events, arrays and plain
ids, and ``streams`` does all I/O with brokers.
"""

from model_core.als import ALSModel, train_als
from model_core.config import ALSConfig, EventWeights, FoldInConfig
from model_core.errors import BadInputError, ConfigError, FreshrecError, ModelIncompatibleError
from model_core.events import Event, EventType
from model_core.online import OnlineRecommender
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
    "OnlineRecommender",
    "UserHistory",
    "train_als",
]
