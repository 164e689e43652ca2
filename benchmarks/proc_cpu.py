"""Per-second CPU of freshrec's processes and the embedded broker, sampled from /proc.

    python benchmarks/proc_cpu.py --seconds 60 & freshrec demo --quiet

Once a second, for ``--seconds``: the CPU (utime + stime) each matching process used in that
second, as a percentage of one core, one column per process (broker, each ``streams.cli``
command, the demo's retrain). The figures behind docs/hot_path.md's "The embedded broker's CPU".
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

_MATCH = {"tansu": "broker", "streams.cli worker": "worker", "streams.cli serve": "serve",
          "streams.cli demo": "demo", "multiprocessing.spawn": "retrain", "freshrec": "freshrec"}


def _processes() -> dict[int, tuple[str, float]]:
    """pid -> (label, CPU seconds so far) of the processes worth watching."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        label = next((name for key, name in _MATCH.items() if key in cmd), None)
        if label is not None and "proc_cpu.py" not in cmd and not cmd.startswith("timeout"):
            out[int(entry.name)] = (label, (int(fields[11]) + int(fields[12])) / tick)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="how long to sample (default 60)")
    args = ap.parse_args()
    t0 = time.monotonic()
    before, at = _processes(), t0
    while time.monotonic() - t0 < args.seconds:
        time.sleep(1.0)
        now, when = _processes(), time.monotonic()
        cells = [f"{label} {100 * (cpu - before[pid][1]) / (when - at):3.0f}%"
                 for pid, (label, cpu) in sorted(now.items()) if pid in before]
        print(f"{when - t0:5.1f}s  " + "  ".join(cells), flush=True)
        before, at = now, when
    return 0


if __name__ == "__main__":
    sys.exit(main())
