"""Wait until a compose project of fedad serves: the aggregator's and every worker's /readyz answer 200, the broker
is healthy and the replayer runs.

    python docker/wait_ready.py fedad [--since EPOCH] [--timeout 600] [--done]

Finds the project's containers by their compose labels (works with Compose v2 and 1.29), reads their published
127.0.0.1 ports from `docker inspect`, and prints when each one became ready, counted from --since (the time
`compose up` was called; default: now). --done also waits until the aggregator reports rounds_done ==
rounds_total. Standard library only; talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
NOT_HTTP = {"broker", "replayer"}  # the MQTT broker and the device replayer serve no /readyz


def containers(project: str) -> list[dict]:
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"],
                         check=True, capture_output=True, text=True).stdout.split()
    if not ids:
        return []
    return json.loads(subprocess.run(["docker", "inspect", *ids], check=True, capture_output=True, text=True).stdout)


def loopback_url(info: dict) -> str | None:
    for bindings in (info["NetworkSettings"]["Ports"] or {}).values():
        for b in bindings or []:
            if b["HostIp"] == "127.0.0.1":
                return f"http://127.0.0.1:{b['HostPort']}"
    return None


def get(url: str) -> tuple[int, dict | None]:
    try:
        with OPENER.open(url, timeout=3) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None
    except (OSError, ValueError):
        return 0, None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project")
    parser.add_argument("--since", type=float, default=None, help="count from this Unix time (before `up`)")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--done", action="store_true", help="also wait until the federation has finished")
    args = parser.parse_args()
    t_begin = args.since or time.time()
    ready: dict[str, float] = {}
    t_stop = time.time() + args.timeout
    infos: list[dict] = []
    while time.time() < t_stop:
        infos = containers(args.project)
        if not infos:
            print(f"no containers in compose project {args.project!r}", file=sys.stderr)
            return 1
        for info in infos:
            service = info["Config"]["Labels"].get("com.docker.compose.service", info["Name"])
            if info["State"]["Status"] == "exited" or info.get("RestartCount", 0) >= 3:
                print(f"{service} exited with code {info['State']['ExitCode']} (restarts: {info.get('RestartCount')})"
                      f"; see its logs", file=sys.stderr)
                return 1
            url = loopback_url(info)
            if service in ready:
                continue
            if service in NOT_HTTP:  # ready once running, and healthy if the image has a health check
                health = info["State"].get("Health", {}).get("Status", "healthy")
                if info["State"]["Status"] != "running" or health != "healthy":
                    continue
                note = "running"
            elif url is None:
                continue
            elif service == "aggregator":
                code, status = get(f"{url}/v1/status")
                if code != 200 or get(f"{url}/readyz")[0] != 200:
                    continue
                if args.done and status.get("rounds_done") != status.get("rounds_total"):
                    continue
                note = f"phase {status['phase']}, rounds {status['rounds_done']}/{status['rounds_total']}"
            else:
                code, _ = get(f"{url}/readyz")
                if code != 200:
                    continue
                _, status = get(f"{url}/v1/status")
                note = f"serving model round {status.get('model_round')}" if status else "serving"
            ready[service] = time.time()
            print(f"{service:<11} ready after {ready[service] - t_begin:5.1f} s  {url}  {note}", flush=True)
        if len(ready) == len(infos):
            print(f"all {len(infos)} services ready after {time.time() - t_begin:.1f} s")
            return 0
        time.sleep(0.5)
    missing = sorted({i['Config']['Labels'].get('com.docker.compose.service') for i in infos} - set(ready))
    print(f"timed out after {args.timeout:.0f} s waiting for {missing}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
