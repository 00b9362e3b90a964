"""One source of truth for how workers train: the aggregator's plan, sent in the join answer, not each worker's
config. Real processes: an aggregator whose config says 2 local epochs, a worker whose own config says 5."""

from support import Stack, wait_until


def test_the_worker_trains_with_the_aggregators_plan_not_its_own_config(tmp_path):
    stack = Stack(tmp_path, workers=["valve2"], rounds=1, epochs=2, min_workers=1, quorum=1)
    worker = stack.worker_services["valve2"]
    worker.env = {**stack.env, "FEDAD__MODEL__LOCAL_EPOCHS": "5"}
    stack.start()
    try:
        final = stack.wait_done()
        status = stack.worker_status("valve2")
        assert status["progress"]["round"] == 1
        assert (status["progress"]["epoch"], status["progress"]["epochs"]) == (2, 2), status["progress"]
        assert final["history"][0]["workers"]["valve2"]["loss"] == status["progress"]["loss"]
        log = wait_until(lambda: (text := worker.log_path.read_text()) and "trained 2 epochs" in text and text, 10,
                         "the training log line")
        assert "training as the aggregator's plan says: local_epochs 2 (own config: 5)" in log, log
        assert "trained 5 epochs" not in log
    finally:
        stack.stop()
