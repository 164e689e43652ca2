"""The throughput ceiling of a freshrec worker: the worker's own Faust app, with an agent that does nothing.

    FRESHREC_...=... python -m benchmarks._ceiling_agent GROUP N STATUS_FILE [stock]

Builds the app with ``streams.worker.app.make_app(settings, app_id=GROUP)`` (the worker's exact
Faust settings: transport, timeouts, serializers, web server), consumes
``settings.events_topic`` with ``take_batches(stream, settings.batch_size,
settings.batch_within_s)`` exactly as ``streams.worker.agent.EventAgent.run`` does, and only
counts. With ``stock``: Faust's own ``kafka://`` transport and ``stream.take_events``
(what a plain Faust agent gets), for comparison. STATUS_FILE gets a JSON line ``{"count", "first", "last", "first_batch"}``
(wall-clock seconds of the first and the latest batch) about every 0.5 s and at once
when N events have been consumed (``"done": true``). Runs until SIGTERM/SIGINT.
Started by ``benchmarks/e2e_throughput.py``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any


def main(argv: list[str]) -> int:
    import faust
    from streams.worker.batching import take_batches

    from streams.settings import load_settings
    from streams.worker.app import make_app

    group, target, status_path = argv[0], int(argv[1]), argv[2]
    stock = argv[3:] == ["stock"]
    settings = load_settings()
    app = make_app(settings, app_id=group, stock=stock)
    topic = app.topic(settings.events_topic, key_serializer="raw", value_serializer="raw")
    st: dict[str, Any] = {"count": 0, "first": None, "last": None, "first_batch": 0, "done": False}
    written = [0.0]

    def write() -> None:
        tmp = status_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(json.dumps(st))
        os.replace(tmp, status_path)
        written[0] = time.time()

    async def ceiling(stream: Any) -> None:
        batches = (stream.take_events(settings.batch_size, within=settings.batch_within_s) if stock
                   else take_batches(stream, settings.batch_size, settings.batch_within_s))
        async for batch in batches:
            now = time.time()
            if st["first"] is None:
                st["first"], st["first_batch"] = now, len(batch)
            st["count"] += len(batch)
            st["last"] = now
            if not st["done"] and st["count"] >= target:
                st["done"] = True
                write()
            elif now - written[0] > 0.5:
                write()

    app.agent(topic, name="freshrec.ceiling")(ceiling)
    write()
    worker = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False, override_logging=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
