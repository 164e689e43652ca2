"""Text summary of a py-spy profile (``py-spy record --threads --format raw``: folded stacks).

    python -m benchmarks._profile_summary FOLDED --seconds S --events N [--rate 100] [--top 25]

Per thread: the share of wall time it was busy (idle samples are not recorded, so
busy = samples / (rate x seconds)). Per function (name + file; the hottest line is
shown): own time (the function is the leaf of the sampled stack) and total time (it
is anywhere on the stack), as % of all busy samples and as microseconds per event
(samples / rate / events). Used by ``benchmarks/e2e_throughput.py --profile-*``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter, defaultdict

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def _short(path: str) -> str:
    for marker in ("site-packages/", "/wt-bench/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _parse(frame: str) -> tuple[str, str]:
    """``func (file:line)`` -> (``func (file)``, ``file:line``)."""
    m = _FRAME.match(frame)
    if not m:
        return frame, ""
    file = _short(m["file"])
    return f"{m['func']} ({file})", f"{file}:{m['line']}" if m["line"] else file


# Steps of a freshrec worker, matched from the sampled stack's leaf upwards: the first frame that
# matches a pattern names the step (so time in asyncio/json/numpy counts for the caller that asked).
STEPS: list[tuple[str, tuple[str, ...]]] = [
    ("compute: exact index search (model_core/index)", ("model_core/index/",)),
    ("compute: fold-in solve (model_core/foldin.py)", ("model_core/foldin.py",)),
    ("compute: other (candidates, ranker, learning, padding)", ("model_core/served/model.py", "model_core/served/signals.py",
                                                                "WorkerModel.plan", "WorkerModel.learn")),
    ("publish: encode lists (encode_recommendation)", ("encode_recommendation",)),
    ("publish: encode user state (UserHistory.encode)", ("UserHistory.encode",)),
    ("decode + validate messages (streams/codec.py)", ("decode_message", "event_from_dict")),
    ("user state: load / apply (model_core/state, streams/userstate)", ("model_core/state.py", "streams/worker/userstate.py")),
    ("Kafka client (librdkafka consume, produce, flush, commit)", ("streams/worker/consumer.py", "streams/worker/publisher.py",
                                                                   "confluent_kafka/", "aiokafka/")),
    ("Faust send path (Topic.send, producer buffer)", ("Topic.send", "Topic.publish_message", "Channel._send_now",
                                                       "faust/transport/producer", "Producer.send (faust")),
    ("web: /metrics scrapes (aiohttp)", ("aiohttp/", "faust/web/")),
    ("batch step own code (BatchProcessor)", ("streams/worker/batch.py",)),
    ("Faust/mode consume + stream machinery", ("faust/", "mode/")),
    ("benchmark ceiling agent own code (count)", ("_ceiling_agent.py",)),
]
_NOISE = ("asyncio/", "threading.py", "concurrent/futures/", "<frozen", "selectors.py", "mode/worker.py",
          "streams/cli/", "run_worker (", "main (_ceiling_agent", "<module> (_ceiling_agent")


_ENTRY = ("mode/worker.py", "streams/cli/", "run_worker (", "main (", "<module> (", "_run_code (",
          "_run_module_as_main (")


def _step(funcs: list[str]) -> str:
    for func in reversed(funcs):
        if func.startswith(_ENTRY) or any(e in func for e in _ENTRY[:3]):
            continue  # the process's entry point is on every stack of the main thread
        for name, patterns in STEPS:
            if any(pat in func for pat in patterns):
                return name
    leaf = funcs[-1] if funcs else ""
    if "selectors.py" in leaf or "asyncio/" in leaf:
        return "asyncio event loop itself (select, callbacks)"
    return "other"


def summarize(folded: str, *, rate: float, seconds: float, events: int, top: int = 25, title: str = "") -> str:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    own_lines: dict[str, Counter[str]] = defaultdict(Counter)
    threads: Counter[str] = Counter()
    own_thread: dict[str, Counter[str]] = defaultdict(Counter)
    steps: Counter[str] = Counter()
    samples = 0
    for raw in folded.splitlines():
        stack, _, n = raw.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = stack.split(";")
        thread = "?"
        if frames and frames[0].startswith("thread ("):
            thread = frames[0].split(": ", 1)[-1]
            frames = frames[1:]
        if not frames:
            continue
        samples += count
        threads[thread] += count
        parsed = [_parse(f) for f in frames]
        leaf, leaf_line = parsed[-1]
        own[leaf] += count
        own_lines[leaf][leaf_line] += count
        own_thread[leaf][thread] += count
        for func in {p[0] for p in parsed}:
            total[func] += count
        steps[_step([p[0] for p in parsed])] += count
    wall = rate * seconds
    us = (lambda c: c / rate / events * 1e6) if events > 0 else (lambda c: float("nan"))
    out = [f"# {title}" if title else "# py-spy profile",
           (f"# {seconds:.1f} s sampled at {rate:.0f} Hz (py-spy --threads --nonblocking, idle samples dropped), "
            f"{samples} busy samples, {events} events in the window"),
           (f"# busy CPU per event, all threads: {us(samples):.0f} us "
            f"(={samples / rate:.2f} CPU-s / {events} events)"), "",
           "## threads: busy share of wall time"]
    for t, c in threads.most_common():
        out.append(f"  {100 * c / wall:6.1f}%  {us(c):8.1f} us/event  {t}")
    out += ["", "## where the time goes, by step (leaf-up match, see STEPS in benchmarks/_profile_summary.py)",
            f"  {'%':>6}  {'us/ev':>8}  step"]
    for name, c in steps.most_common():
        out.append(f"  {100 * c / max(samples, 1):6.1f}  {us(c):8.1f}  {name}")
    for name, counter in (("own (self) time", own),
                          ("total (inclusive) time, without stdlib/entry-point frames", total)):
        out += ["", f"## top {top} functions by {name}: % of busy samples, us per event",
                f"  {'%':>6}  {'us/ev':>8}  function (file) @ hottest line [thread]"]
        ranked = [(f, c) for f, c in counter.most_common()
                  if counter is own or not any(n in f for n in _NOISE)][:top]
        for func, c in ranked:
            line = own_lines[func].most_common(1)[0][0] if own_lines.get(func) else ""
            thread = own_thread[func].most_common(1)[0][0] if own_thread.get(func) else ""
            out.append(f"  {100 * c / max(samples, 1):6.1f}  {us(c):8.1f}  {func}"
                       + (f" @ {line}" if line else "") + (f" [{thread}]" if thread else ""))
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folded")
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--events", type=int, required=True)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--title", default="")
    args = ap.parse_args(argv)
    with open(args.folded) as f:
        sys.stdout.write(summarize(f.read(), rate=args.rate, seconds=args.seconds, events=args.events, top=args.top,
                                   title=args.title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
