"""`freshrec worker` processes for the integration and fault tests (tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from streams.settings import Settings, load_settings


class WorkerProcess:
    """One `freshrec worker` process with its log file."""

    def __init__(self, settings: Settings, models: Path, log: Path) -> None:
        env = dict(os.environ, FRESHREC_DEVICE="cpu", **{
            f"FRESHREC_{name.upper()}": str(getattr(settings, name)) for name in (
                "brokers", "profile", "topic_prefix", "partitions", "web_port", "group", "k", "model_poll_s",
                "metrics_interval_s", "data_dir", "batch_within_s", "assignment", "kafka_debug", "trending_every_s",
                "snapshot_every_s")})
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "--model", str(models)],
                                         env=env, stdout=out, stderr=subprocess.STDOUT)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 60.0, count: int = 1) -> None:
        deadline = time.time() + timeout
        while self.log_text().count(text) < count:
            assert self.proc.poll() is None, f"worker exited ({self.proc.returncode}):\n{self.log_text()[-3000:]}"
            assert time.time() < deadline, f"no {text!r} in {timeout:.0f}s:\n{self.log_text()[-3000:]}"
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


def fault_settings(bootstrap: str, tmp_path: Path, prefix: str) -> Settings:
    """Settings of a fault test: its own topics and group, 2 partitions, k=5, 1 s metrics lines."""
    import uuid

    return load_settings(environ={}).with_(
        brokers=bootstrap, profile="embedded", topic_prefix=f"{prefix}{uuid.uuid4().hex[:8]}", partitions=2,
        web_port=0, group=f"g{uuid.uuid4().hex[:8]}", k=5, metrics_interval_s=1.0, data_dir=str(tmp_path / "d"),
        kafka_debug=os.environ.get("FRESHREC_TEST_KAFKA_DEBUG", ""))


def small_model(tmp_path: Path) -> Path:
    """A tiny trained model (60 items, k=8) under tmp_path/models."""
    from model_core.als import train_als
    from model_core.config import ALSConfig
    from model_core.offline.synth import SynthConfig, generate_events

    synth = SynthConfig(users=100, items=60, events=3000, clusters=3, seed=5)
    train_als(generate_events(synth), ALSConfig(factors=8, iterations=4), device="cpu").save(tmp_path / "models")
    return tmp_path / "models"
