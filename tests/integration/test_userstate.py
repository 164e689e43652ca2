"""State recovery against a real broker: owner epochs fence a zombie's late writes."""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import Producer

from model_core.state import UserHistory
from streams.kafka import client_config, ensure_topics
from streams.settings import Settings
from streams.worker.userstate import UserStateStore


def _write(settings: Settings, store: UserStateStore, user: str, offset: int) -> None:
    p = Producer(client_config(settings, "producer"))
    p.produce(settings.state_topic, UserHistory(user, position=(0, offset)).encode(), user.encode(), partition=0,
              headers=store.headers(0))
    assert p.flush(10) == 0


def test_a_zombies_late_write_never_rolls_a_user_back(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    ensure_topics(settings)
    old, new, next_ = UserStateStore(settings), UserStateStore(settings), UserStateStore(settings)
    old.recover({0})
    _write(settings, old, "u", 5)
    new.recover({0})  # the group moved partition 0: the new owner's marker is a newer epoch
    assert new.epoch(0) > old.epoch(0) and new.get(0, "u").position == (0, 5)
    _write(settings, new, "u", 9)
    _write(settings, old, "u", 7)  # the old owner, paused past its session, writes late
    _write(settings, old, "v", 3)  # and a user the new owner never touched: its write stands
    with caplog.at_level(logging.WARNING, "freshrec.state"):
        next_.recover({0})
    assert "1 users had a stale (zombie) record" in caplog.text
    assert next_.get(0, "u").position == (0, 9)
    assert next_.get(0, "v").position == (0, 3)
    # the winner was written again after the zombie's record, so compaction keeps the right one
    again = UserStateStore(settings)
    caplog.clear()
    with caplog.at_level(logging.WARNING, "freshrec.state"):
        again.recover({0})
    assert "stale (zombie)" not in caplog.text
    assert again.get(0, "u").position == (0, 9) and again.epoch(0) > next_.epoch(0)
