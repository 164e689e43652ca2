"""Offline-only code: event-log readers, the synthetic log generator, prequential evaluation.

The serving path (``online``, ``state``, ``index``, ``foldin``, ``als``) imports
none of it; the CLI, replay, the demo, tests and benchmarks do.
"""
