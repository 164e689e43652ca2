"""The model's own ceiling: a worker's compute on the backlog, without Kafka.

    FRESHREC_...=... python -m benchmarks._model_only EVENTS_JSONL OUT_JSON

Loads the served model from ``FRESHREC_MODEL_DIR`` exactly as a worker does
(``streams.worker.WorkerModel``: fold-in settings, index kind, device; the compute
thread's BLAS/OpenMP limit), then runs the events through it in micro-batches of
``FRESHREC_BATCH_SIZE``, as ``streams.worker.batch.BatchProcessor`` does after
decoding: each event applied to its user's ``UserHistory`` with a (partition, offset)
position (``apply``), then ``WorkerModel.plan`` (the touched users' lists) and
``WorkerModel.learn`` (the batch learned) for the batch, all in one thread. Writes
``{"ev_s", "seconds", "cpu_us_per_event", "events", "batches", "lists"}`` (events/s over all
the batches and the process's CPU time per event, model loading not counted) to OUT_JSON, and
``seconds_by_stage`` where the tree's served model times its stages (``StageClock``: fold-in,
search, each candidate source, the feature table, ranking, the delta, learning). Started by ``benchmarks/e2e_throughput.py``: a worker
can drain no faster than this, whatever its stream does.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    from model_core.events import Event, event_from_json
    from model_core.served.shared import decode_delta
    from model_core.state import UserHistory
    from streams.settings import load_settings
    from streams.worker import _limit_compute_threads
    from streams.worker.model import WorkerModel

    events_path, out_path = argv
    settings = load_settings()
    _limit_compute_threads(settings.compute_threads)
    model = WorkerModel(settings, Path(settings.model_dir), settings.foldin)
    model.load_initial()
    own = getattr(model, "own_delta", None)  # its own records from memory (trees since 98e01e2)
    rec = model.rec
    assert rec is not None
    clock = None
    try:  # per-stage seconds, where this tree's served model keeps them
        from model_core.served.signals import StageClock

        clock = rec.signals.clock = StageClock()
    except ImportError:
        pass
    with open(events_path) as f:
        events = [event_from_json(line) for line in f if line.strip()]
    histories: dict[str, UserHistory] = {}
    n = settings.batch_size
    lists = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for start in range(0, len(events), n):
        batch = events[start:start + n]
        touched: dict[str, UserHistory] = {}
        applied: list[Event] = []
        for offset, ev in enumerate(batch, start):
            h = histories.get(ev.user_id) or histories.setdefault(ev.user_id, UserHistory(ev.user_id))
            if rec.apply(h, ev, (0, offset)):  # one log: the event's index is its offset
                touched[ev.user_id] = h
                applied.append(ev)
        if touched:
            served, plan, wire = model.plan(applied, touched)
            lists += len(plan.lists)
            for record in wire:  # what the worker applies when it reads its record back
                served.learn((own(record) if own else None) or decode_delta(record))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    Path(out_path).write_text(json.dumps({"ev_s": round(len(events) / seconds, 1), "seconds": round(seconds, 2),
                                          "cpu_us_per_event": round(1e6 * cpu / len(events), 1),
                                          "events": len(events), "batches": -(-len(events) // n), "lists": lists,
                                          **({"seconds_by_stage": _stages(clock.seconds, seconds)} if clock else {})}))
    model.executor.shutdown(wait=False)
    return 0


def _stages(seconds: dict[str, float], total: float) -> dict[str, float]:
    """The clock's stages, and what the run spent outside them (applying events to histories,
    encoding and learning-from-memory bookkeeping) as ``other``."""
    out = {k: round(v, 3) for k, v in seconds.items()}
    out["other"] = round(total - sum(seconds.values()), 3)
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
