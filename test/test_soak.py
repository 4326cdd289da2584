"""Flood and soak, CI size (vlm2_ros/reliability/soak.py): 4 cameras at 30 Hz 640x480 into
vlm2_node with 8 clients querying, for 24 s. The node cannot keep up on 2 cores: every frame must
still be ingested or dropped and counted, every query answered or given an error code, and the
node must stay up with flat memory. `vlm2 bench soak --minutes 10` is the long run."""
import json
import os

import pytest

pytestmark = pytest.mark.ros
DOMAIN = 100 + os.getpid() % 50


def test_soak_ci_variant(tmp_path):
    pytest.importorskip("rclpy", reason="rclpy is installed by `make` (ROS 2 wheels)")
    from vlm2_ros.cli import main
    path = tmp_path / "soak.json"
    code = main(["bench", "soak", "--minutes", "0.4", "--domain-id", str(DOMAIN), "--json", str(path)])
    r = json.loads(path.read_text())
    assert code == 0, r
    assert {"queries_sent", "queries_answered_or_clean_error", "node_crashes", "rss_max_mb", "rss_growth_mb"} <= set(r)
    assert r["node_crashes"] == 0 and r["node_exit_code"] == 0, r
    assert r["frames_received"] > 0 and r["frames_ingested"] > 0, r
    assert r["frames_published"] >= r["frames_received"], r   # the camera process counted to the end
    assert r["frames_unaccounted"] == 0, r          # every frame received is ingested or counted as dropped
    assert r["queries_sent"] > 0 and r["queries_answered_or_clean_error"] == r["queries_sent"], r
    assert r["queries_no_response"] == 0 and r["queries_internal_error"] == 0, r
    assert r["rss_growth_mb"] < 100, r              # loose in a 24 s run; the report holds the real figure
    assert path.with_suffix(".png").is_file()
