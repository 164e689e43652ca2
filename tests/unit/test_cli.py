from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from model_core.als import ALSModel
from streams.cli import main

SMALL = ["--factors", "8", "--iterations", "3", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "shop.jsonl.gz"
    assert main(["generate", "--out", str(path), "--users", "60", "--items", "50", "--events", "3000",
                 "--clusters", "4", "--quiet"]) == 0
    return path


def test_generate_train_evaluate(log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--log", str(log), "--out", str(tmp_path / "models"), "--fraction", "0.5", *SMALL]) == 0
    model = ALSModel.load(tmp_path / "models")
    assert model.config.factors == 8 and model.metadata["n_events"] == 1500
    out = tmp_path / "report.json"
    # "incremental", the served model's old name, still works
    assert main(["evaluate", "--log", str(log), "--k", "5", "--models", "incremental,popular,covisit",
                 "--json", str(out), *SMALL]) == 0
    report = json.loads(out.read_text())
    assert report["k"] == 5 and report["eval_points"] > 0
    assert set(report["models"]) == {"served", "popular", "covisit"}
    for r in report["models"].values():
        assert set(r) >= {"hr", "ndcg", "mrr", "purchase_hr", "events_per_s"}
        assert 0.0 <= r["hr"] <= 1.0
    printed = capsys.readouterr().out
    assert "served vs popular" in printed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--log", "/nonexistent/events.csv", "--out", "m"], "/nonexistent/events.csv"),
        (["evaluate", "--log", "LOG", "--train-fraction", "2"], "train_fraction"),
        (["evaluate", "--log", "LOG", "--models", "served,magic"], "unknown model"),
        (["train", "--log", "LOG", "--out", "M", "--weights", "view=x"], "not a number"),
        (["train", "--log", "LOG", "--out", "M", "--factors", "0"], "factors"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(argv: list[str], message: str, log: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(log) if a == "LOG" else str(tmp_path / "m") if a == "M" else a for a in argv]
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"freshrec {argv[0]}: error:") and message in err[0]


def test_malformed_rows_are_reported_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "events.csv"
    rows = ["timestamp,visitorid,event,itemid,transactionid"]
    rows += [f"{1433221332117 + i * 1000},{i % 5},view,{i % 7}," for i in range(40)]
    rows.insert(3, "garbage")
    path.write_text("\n".join(rows) + "\n")
    assert main(["train", "--log", str(path), "--out", str(tmp_path / "m"), *SMALL]) == 0
    assert "1 skipped (line 4:" in caplog.text


def test_help_explains_every_command() -> None:
    for command in ("generate", "train", "evaluate"):
        out = subprocess.run([sys.executable, "-m", "streams.cli", command, "--help"],
                             capture_output=True, text=True, check=True).stdout
        assert "usage: freshrec" in out and len(out.splitlines()) > 8
