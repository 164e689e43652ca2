"""A real ``freshrec serve`` process on a free loopback port, and a small HTTP client for it
(integration and browser tests)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from streams.broker import free_port
from streams.codec import Recommendation, encode_recommendation
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


class ServeProcess:
    """``python -m streams.cli serve`` against ``settings``' broker and topics."""

    def __init__(self, settings: Settings, log_path: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith("FRESHREC_")}
        with open(log_path, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "serve", "--brokers", settings.brokers, "--profile",
                 settings.profile, "--topic-prefix", settings.topic_prefix, "--port", str(self.port), *extra],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(self, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
        """(status, parsed JSON body or text) of GET ``path`` (POST when ``body`` or ``raw`` is given)."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data,
                                     headers={"Content-Type": "application/json"} if data is not None else {})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                status, text = r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode()
        try:
            return status, json.loads(text)
        except json.JSONDecodeError:
            return status, text

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}:\n{self.log()}")
            try:
                if self.request("/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"serve not ready after {timeout}s:\n{self.log()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)


def rec(user: str, items: list[str], *, published_at: float | None = None, model: str = "v1",
        sources: list[list[str] | None] | None = None, last_event_at: float | None = None) -> bytes:
    """A recommendation message for ``user`` (scores descending from 1)."""
    now = time.time() if published_at is None else published_at
    return encode_recommendation(Recommendation(
        user, [(i, 1.0 - n / 100) for n, i in enumerate(items)], model, 3, 7, "e-7", now - 1, now,
        last_event_at=now - 0.05 if last_event_at is None else last_event_at,
        sources=None if sources is None else sources[: len(items)]))
