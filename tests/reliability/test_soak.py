"""A short, bounded soak on loopback: /detect under concurrent load on every worker while rounds keep closing and
models are hot-swapped. Zero errors; memory does not run away. The long run is `tests/reliability/soak.py`."""

from reliability.soak import run_soak


def test_detect_under_load_while_the_federation_runs(tmp_path):
    # long enough for a round: each one starts a training process (torch's import alone is ~2 s on a loaded box)
    report = run_soak(seconds=20, concurrency=4, batch=16, workdir=tmp_path)
    print(report)
    assert report["errors"] == 0, report["error_samples"]
    assert report["requests"] > 100
    assert report["rounds_completed_meanwhile"] >= 1, "the round loop ran during the load"
    for name, rss in report["rss_mb"].items():
        assert rss["growth"] < 150, f"{name} grew {rss['growth']} MB in 8 s"
