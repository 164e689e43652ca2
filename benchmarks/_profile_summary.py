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


def summarize(folded: str, *, rate: float, seconds: float, events: int, top: int = 25, title: str = "") -> str:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    own_lines: dict[str, Counter[str]] = defaultdict(Counter)
    threads: Counter[str] = Counter()
    own_thread: dict[str, Counter[str]] = defaultdict(Counter)
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
    wall = rate * seconds
    us = (lambda c: c / rate / events * 1e6) if events > 0 else (lambda c: float("nan"))
    out = [f"# {title}" if title else "# py-spy profile",
           f"# {seconds:.1f} s sampled at {rate:.0f} Hz (py-spy --threads --nonblocking, idle samples dropped), "
           f"{samples} busy samples, {events} events in the window",
           f"# busy CPU per event, all threads: {us(samples):.0f} us "
           f"(={samples / rate:.2f} CPU-s / {events} events)", "",
           "## threads: busy share of wall time"]
    for t, c in threads.most_common():
        out.append(f"  {100 * c / wall:6.1f}%  {us(c):8.1f} us/event  {t}")
    for name, counter in (("own (self) time", own), ("total (inclusive) time", total)):
        out += ["", f"## top {top} functions by {name}: % of busy samples, us per event",
                f"  {'%':>6}  {'us/ev':>8}  function (file) @ hottest line [thread]"]
        for func, c in counter.most_common(top):
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
