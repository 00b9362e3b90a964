"""What a KubeEdge mapper configured by a Device of deploy/devices sends over MQTT, and what comes back in the twin.

    python tests/containers/mapper_sim.py DEVICE.yaml ROWS.csv --port 1883 --rows-to-send 1000 --wait 120

Publishes the CSV's rows (SKAB: ``;``-separated, one a second) property by property, each to the topic of that
property's ``pushMethod.mqtt`` with the mapper framework's text (``time is <local time>  <topic>: <value>``, QoS 1,
mapper-framework ``data/publish/mqtt``), then listens on the Device's twin-update topic until a report says
``alarm: open`` (or ``--wait`` s pass) and prints every twin message it heard as one JSON line.
tests/containers/test_kube_play.py runs it inside the network namespace of its podman run, where the broker and the
workers are.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import sys
import threading
import time

import orjson
import paho.mqtt.client as paho
import yaml

T0 = 1_764_000_000  # the rows' clock: one a second from here


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("device")
    parser.add_argument("rows")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--rows-to-send", type=int, default=1000)
    parser.add_argument("--wait", type=float, default=120)
    args = parser.parse_args()
    device = yaml.safe_load(open(args.device))
    name = device["metadata"]["name"]
    topics = {p["name"]: p["pushMethod"]["mqtt"]["topic"] for p in device["spec"]["properties"]
              if "mqtt" in p.get("pushMethod", {})}
    with open(args.rows) as f:
        rows = list(csv.DictReader(f, delimiter=";"))[:args.rows_to_send]
    heard, opened = [], threading.Event()

    def on_message(client, userdata, message):
        doc = orjson.loads(message.payload)
        heard.append(doc)
        if doc["twin"].get("alarm", {}).get("actual", {}).get("value") == "open":
            opened.set()

    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"mapper-{name}")
    client.on_message = on_message
    client.connect("127.0.0.1", args.port)
    client.subscribe(f"$hw/events/device/{name}/twin/update", qos=1)
    client.loop_start()
    pending = []
    for i, row in enumerate(rows):
        when = dt.datetime.fromtimestamp(T0 + i).strftime("%Y-%m-%d %H:%M:%S")
        for prop, topic in topics.items():
            pending.append(client.publish(topic, f"time is {when}  {topic}: {row[prop]}", qos=1))
        if len(pending) > 2000:
            for info in pending:
                info.wait_for_publish(30)
            pending.clear()
    for info in pending:
        info.wait_for_publish(30)
    print(f"published {len(rows)} rows x {len(topics)} properties", file=sys.stderr, flush=True)
    opened.wait(args.wait)
    time.sleep(1)  # the reports right after the opening one
    client.loop_stop()
    for doc in heard:
        print(orjson.dumps(doc).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
