"""The worker's connection to its node's MQTT broker (paho-mqtt): device data in, alarm events out.

paho's network thread (``loop_start``) keeps the connection and reconnects after a broker outage, backing off up
to ``RECONNECT_MAX_S``; subscriptions are (re)made in ``on_connect``, so they come back with every reconnection.
The session is persistent (``clean_session`` false under a fixed client id): while the worker restarts, the broker
keeps its QoS 1 messages for it. ``on_message`` runs on paho's thread and only hands the raw message on: parsing
and scoring happen on the ingestion thread, so a slow model never stalls the connection's keep-alive.

One link serves two parts of the worker: device data in (services/worker/ingest/pipeline.py) and alarm events out
(services/worker/alarms.py). Both are built on it, so what it subscribes to and whom it tells are given when it
starts (``start``), once all of them exist.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

import paho.mqtt.client as paho

from services.config import Settings, WorkerSettings

log = logging.getLogger("fedad.worker.mqtt")
RECONNECT_MAX_S = 5


class MqttLink:
    def __init__(self, host: str, port: int, client_id: str, qos: int, keepalive_s: int = 30):
        self.host, self.port, self.qos = host, port, qos
        self.keepalive = keepalive_s
        self.subscriptions: list[str] = []
        self.handle: Callable[[str, bytes], None] = lambda topic, payload: None
        self.on_connected: Callable[[], None] = lambda: None  # after each (re)connection and subscription
        self.connected = threading.Event()
        self.connections = 0
        self.taps: dict[str, Callable[[str, bytes], None]] = {}  # topic -> handler, beside the device data
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.reconnect_delay_set(min_delay=1, max_delay=RECONNECT_MAX_S)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    @classmethod
    def from_settings(cls, settings: Settings, worker: WorkerSettings) -> MqttLink | None:
        """The link ``ingest.mqtt`` describes, or None when it is not enabled."""
        mqtt = settings.ingest.mqtt
        if not mqtt.enabled:
            return None
        return cls(mqtt.host, mqtt.port, mqtt.client_id or f"fedad-{worker.id}", mqtt.qos, mqtt.keepalive_s)

    def start(self, subscriptions: list[str], on_message: Callable[[str, bytes], None],
              on_connected: Callable[[], None] | None = None,
              taps: dict[str, Callable[[str, bytes], None]] | None = None) -> None:
        """Connect in the background (a broker that is not up yet is retried like a lost one), subscribe to
        ``subscriptions`` after each (re)connection, hand every message to ``on_message`` and call
        ``on_connected`` once subscribed. ``taps``: exact topics (a broker's $SYS counters) whose messages go to
        their own handler on paho's thread instead of the device-data path."""
        self.subscriptions, self.handle, self.taps = list(subscriptions), on_message, dict(taps or {})
        if on_connected is not None:
            self.on_connected = on_connected
        self.client.connect_async(self.host, self.port, keepalive=self.keepalive)
        self.client.loop_start()

    def stop(self) -> None:
        self.connected.clear()  # a disconnection we asked for: not reported as lost
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str, payload: bytes, qos: int = 1, timeout: float = 5.0) -> bool:
        """Publish and wait for the broker's acknowledgement (PUBACK for QoS 1); False if it did not come."""
        if not self.connected.is_set():
            return False
        info = self.client.publish(topic, payload, qos=qos)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            return False
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError):  # the message was refused or the connection dropped
            return False
        return info.is_published()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("MQTT broker %s:%d refused the connection: %s", self.host, self.port, reason_code)
            return
        self.connections += 1
        if self.subscriptions or self.taps:
            client.subscribe([(topic, self.qos) for topic in self.subscriptions] + [(t, 0) for t in self.taps])
        self.connected.set()
        self.on_connected()
        log.info("MQTT connected to %s:%d, subscribed to %s", self.host, self.port, ", ".join(self.subscriptions))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self.connected.is_set():
            log.warning("MQTT connection to %s:%d lost (%s): reconnecting", self.host, self.port, reason_code)
        self.connected.clear()

    def _on_message(self, client, userdata, message) -> None:
        try:
            tap = self.taps.get(message.topic)
            (tap or self.handle)(message.topic, message.payload)
        except Exception:  # never let one message end paho's network thread
            log.exception("MQTT message on %s could not be handed on", message.topic)
