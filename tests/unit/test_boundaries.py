"""model_core must stay importable and usable with no Kafka or Faust module loaded."""

from __future__ import annotations

import subprocess
import sys


def test_model_core_never_imports_kafka_or_faust() -> None:
    code = (
        "import sys, pkgutil, importlib, model_core\n"
        "for m in pkgutil.walk_packages(model_core.__path__, 'model_core.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in "
        "('faust', 'mode', 'aiokafka', 'confluent_kafka', 'kafka', 'streams'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_serving_path_never_imports_offline_code() -> None:
    code = (
        "import sys, model_core.served.model, model_core.state, model_core.index, model_core.foldin, model_core.als\n"
        "print(','.join(sorted(n for n in sys.modules if n.startswith('model_core.offline'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
