"""A short continual run on the week's fleet (continual_week.py): rounds keep opening on the schedule, train on the
live rows the workers kept, and none is lost while the aggregator and a worker are killed with SIGKILL midway."""

from __future__ import annotations

from reliability.continual_week import WORKERS, plot, run_week


def test_a_compressed_week_keeps_learning_through_kills_without_losing_a_round(tmp_path):
    # smoke size: a reading every 2 minutes (12,960 live rows to play, not 25,920: the replay sets the length of this
    # test; fewer rows would leave the four rounds little margin on a loaded machine)
    report = run_week(rounds=4, every_s=3.0, replay_s=30.0, workdir=tmp_path, reading_s=120.0)
    assert report["problems"] == []
    assert report["continual_rounds"] >= 4 and len(report["events"]) == 2
    continual = [r for r in report["rounds"] if r["round"] > report["campaign_rounds"]]
    assert all(r["trigger"] == "schedule" for r in continual)
    first, last = continual[0]["samples"], continual[-1]["samples"]
    for w in WORKERS:  # the live rows each worker scored normal joined its training data
        assert last[w] > first[w] > report["rounds"][0]["samples"][w]
        figures = report["workers"][w]
        assert figures["buffer_rows"] > 0 and figures["rounds_trained"] == len(report["rounds"])
    assert report["replayed_rows"] == report["replay_rows_planned"]
    plot(report, tmp_path / "week.png")
    assert (tmp_path / "week.png").stat().st_size > 10_000
