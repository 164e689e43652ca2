from __future__ import annotations

from streams.worker.metrics import Metrics


def test_stage_times_reach_the_log_line_and_prometheus() -> None:
    m = Metrics()
    assert "compute=Nonems publish=Nonems" in m.log_line()  # no batch yet
    for seconds in (0.03, 0.05):
        m.stage("compute", seconds)
    m.stage("publish", 0.01)
    assert "compute=40.0ms publish=10.0ms" in m.log_line()
    text = m.prometheus().decode()
    assert 'freshrec_batch_stage_seconds_count{stage="compute"} 2.0' in text
    assert 'freshrec_batch_stage_seconds_bucket{le="0.05",stage="compute"} 2.0' in text
    assert 'freshrec_batch_stage_seconds_bucket{le="0.025",stage="compute"} 0.0' in text
    assert 'freshrec_batch_stage_seconds_count{stage="publish"} 1.0' in text
