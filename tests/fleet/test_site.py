"""A site aggregator between two real workers and the root, real processes on loopback: the site is one worker
upstream (one update per round, its nodes' samples summed, its own token), its nodes install the root's models, and
a site that loses its upstream keeps its nodes served, closes its round and catches up once the root is back."""

from __future__ import annotations

import signal

import httpx

from benchmarks.common import newest_round, wait_until
from support import Stack

SITE_TOKEN = "site-a-token-0123456789"


def test_a_site_aggregator_serves_its_nodes_and_is_one_worker_upstream_even_across_an_upstream_cut(tmp_path):
    # the root knows one worker: the site (config.yaml's entry "other", with the site's own token); the site's
    # nodes are unknown up there
    root = Stack(tmp_path / "root", workers=["other"], rounds=3, min_workers=1, quorum=1, overrides={
        "FEDAD__WORKERS__OTHER__TOKEN": SITE_TOKEN, "FEDAD__FEDERATION__ROUND_DEADLINE_S": "600"})
    # the site: an aggregator to valve1 and valve2, role site, upstream the root
    site = Stack(tmp_path / "site", workers=["valve1", "valve2"], rounds=3, epochs=1, min_workers=2, quorum=2,
                 overrides={"FEDAD__AGGREGATOR__ROLE": "site", "FEDAD__AGGREGATOR__UPSTREAM__URL": root.agg_url,
                            "FEDAD__AGGREGATOR__UPSTREAM__ID": "other",
                            "FEDAD__AGGREGATOR__UPSTREAM__TOKEN": SITE_TOKEN})
    for stack in (root, site):
        stack.tmp.mkdir(parents=True, exist_ok=True)
    root.aggregator.start().wait_healthy()
    site.start()
    try:
        def round_done(n: int):
            def check():
                s, r = site.status(), root.status()
                if not (s and r and r["rounds_done"] >= n and s["rounds_done"] >= n):
                    return None
                workers = [site.worker_status(w) for w in site.workers]
                return (s, r) if all(w and newest_round(w) >= n for w in workers) else None
            return check
        site_status, root_status = wait_until(round_done(2), 300, "two rounds through the site")
        for record in root_status["history"]:  # one update per round from the site, its nodes' samples summed
            assert list(record["workers"]) == ["other"], record
            site_record = httpx.get(f"{site.agg_url}/v1/rounds/{record['round']}").json()
            assert set(site_record["workers"]) == {"valve1", "valve2"} and site_record["upstream"]
            assert record["workers"]["other"]["sample_count"] == sum(
                w["sample_count"] for w in site_record["workers"].values())
        assert site_status["role"] == "site" and site_status["model"]["sha256"] == root_status["model"]["sha256"]
        assert site_status["rounds_total"] == 3, "the site tells its nodes the root's campaign"
        fleet = httpx.get(f"{site.agg_url}/v1/fleet").json()
        assert fleet["upstream"]["rounds_total"] == 3

        # the upstream is cut: the site keeps serving its nodes and closes its round on its own
        root.aggregator.kill(signal.SIGKILL)
        assert httpx.get(f"{site.agg_url}/v1/model", headers={"Authorization": "Bearer dev-token-valve1"}
                         ).status_code == 200
        for w in site.workers:
            assert httpx.get(f"{site.worker_url(w)}/readyz").status_code == 200
        # round 3 opened before the cut (the root opens it once round 2 closes): the nodes train it, the site
        # closes it and keeps the aggregate for the root
        held = wait_until(lambda: (f := httpx.get(f"{site.agg_url}/v1/fleet").json())["outbox"] and f, 240,
                          "the site to close round 3 with its root away")
        assert held["outbox"]["round"] == 3 and held["rounds_done"] == 2
        root.aggregator.start().wait_healthy()  # back: the site sends what it holds, and catches up
        site_status, root_status = wait_until(round_done(3), 240, "round 3 once the root is back")
        assert list(root_status["history"][-1]["workers"]) == ["other"]
        assert site_status["model"]["sha256"] == root_status["model"]["sha256"]
    finally:
        site.stop()
        root.stop()


def test_a_site_that_missed_rounds_adopts_the_newest_model_in_one_step(tmp_path):
    """Two sites; the root closes each round with the first (quorum 1 at a short deadline) while the other is down:
    back, that site does not replay the rounds it missed (an aggregate it held for one is refused as stale and
    dropped), it adopts the root's newest model at once and its node installs it."""
    root = Stack(tmp_path / "root", workers=["valve2", "other"], rounds=30, min_workers=2, quorum=1, overrides={
        "FEDAD__WORKERS__VALVE2__TOKEN": SITE_TOKEN, "FEDAD__WORKERS__OTHER__TOKEN": SITE_TOKEN + "-b",
        "FEDAD__FEDERATION__ROUND_DEADLINE_S": "5"})
    sites = {}
    for name, token in (("valve2", SITE_TOKEN), ("other", SITE_TOKEN + "-b")):
        sites[name] = Stack(tmp_path / name, workers=["valve1"], rounds=1, epochs=1, min_workers=1, quorum=1,
                            overrides={"FEDAD__AGGREGATOR__ROLE": "site",
                                       "FEDAD__AGGREGATOR__UPSTREAM__URL": root.agg_url,
                                       "FEDAD__AGGREGATOR__UPSTREAM__ID": name,
                                       "FEDAD__AGGREGATOR__UPSTREAM__TOKEN": token})
    for stack in (root, *sites.values()):
        stack.tmp.mkdir(parents=True, exist_ok=True)
    root.aggregator.start().wait_healthy()
    for stack in sites.values():
        stack.start()
    try:
        wait_until(lambda: (s := root.status()) and s["rounds_done"] >= 1 and s, 300, "a first root round")
        b = sites["other"]
        b.aggregator.kill(signal.SIGKILL)  # site-b away while the root moves on with site-a
        moved = root.status()["rounds_done"]
        wait_until(lambda: (s := root.status()) and s["rounds_done"] >= moved + 2 and s, 300,
                   "the root to move on without site-b")
        b.aggregator.start().wait_healthy()
        caught = wait_until(lambda: (s := b.status()) and s["rounds_done"] >= moved + 2 and s, 300,
                            "site-b to catch up")
        jumped = [h for h in caught["history"] if h["closed_by"] == "upstream" and h["round"] > moved]
        assert jumped, "the site adopted the root's newest model in one step, without the rounds it missed"
        assert jumped[0]["round"] >= moved + 2 and jumped[0]["contributors"] == 0
        for w in b.workers:  # and its node serves that model
            wait_until(lambda w=w: (newest_round(b.worker_status(w) or {}) or 0) >= jumped[0]["round"], 120,
                       "the site's node to install the adopted model")
    finally:
        for stack in sites.values():
            stack.stop()
        root.stop()
