"""Delivery of a monitor's events to its targets: JSON-lines files, webhooks, MQTT.

Each (monitor, target) has a worker that follows the event log from a stored cursor: it sends
every event of its monitor in order, retries with exponential backoff, puts an event that still
fails into the dead letters, and stores its cursor after each event. After a crash it starts
again from the stored cursor, so delivery is at least once; receivers de-duplicate on
(event_id, phase, cursor), which the payload carries.

Webhook requests carry `X-AnyAnomaly-Timestamp` (Unix seconds) and `X-AnyAnomaly-Signature:
sha256=<hex HMAC-SHA256 over "<timestamp>.<body>">` keyed with the target's secret."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import re
import ssl
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Protocol

import httpx

from anyanomaly.v1 import events_pb2, monitors_pb2
from services.common.errors import InvalidInput, ServiceError, echo
from services.common.event_document import event_json
from services.common.urls import redact
from services.orchestrator.live.notify import Changes
from services.orchestrator.store.store import EventFilter, Store

LOG = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-AnyAnomaly-Signature"
TIMESTAMP_HEADER = "X-AnyAnomaly-Timestamp"
EVENT_ID_HEADER = "X-AnyAnomaly-Event-Id"
MAX_BACKOFF_SECONDS = 300.0
def sign(secret: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def slug(text: str) -> str:
    """A topic level / id part for a text: lower case, runs of other characters as '_'."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:64] or hashlib.sha256(text.encode()).hexdigest()[:12]


class Sink(Protocol):
    async def start(self, texts: list[str]) -> None: ...
    async def send(self, event: events_pb2.Event, payload: bytes) -> None:
        """Deliver once; raise on failure (the worker retries)."""
    async def close(self) -> None: ...


class JsonLinesSink:
    def __init__(self, path: Path) -> None:
        self._path = path

    async def start(self, texts: list[str]) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)

    async def send(self, event: events_pb2.Event, payload: bytes) -> None:
        def append() -> None:
            with self._path.open("ab") as file:
                file.write(payload + b"\n")
        await asyncio.to_thread(append)

    async def close(self) -> None:
        return None


class WebhookSink:
    def __init__(self, url: str, secret: str, timeout_seconds: float) -> None:
        self._url = url
        self._secret = secret
        self._client = httpx.AsyncClient(timeout=timeout_seconds, follow_redirects=False)

    async def start(self, texts: list[str]) -> None:
        return None

    async def send(self, event: events_pb2.Event, payload: bytes) -> None:
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: timestamp, EVENT_ID_HEADER: event.event_id}
        if self._secret:
            headers[SIGNATURE_HEADER] = sign(self._secret, timestamp, payload)
        response = await self._client.post(self._url, content=payload, headers=headers)
        if not 200 <= response.status_code < 300:
            raise RuntimeError(f"HTTP {response.status_code}")

    async def close(self) -> None:
        await self._client.aclose()


class MqttSink:
    """Events on `<prefix>/<monitor>/<text>/event`, a retained ON/OFF on `.../state`, the
    monitor's availability (online, or offline by last will) and Home Assistant discovery."""

    def __init__(self, target: monitors_pb2.MqttTarget, monitor_id: str, monitor_name: str, client_key: str) -> None:
        import paho.mqtt.client as mqtt  # only monitors with an MQTT target need it
        from paho.mqtt.enums import CallbackAPIVersion

        url = urllib.parse.urlsplit(target.url)
        self._prefix = (target.topic_prefix or "anyanomaly").rstrip("/")
        self._monitor_id, self._monitor_name = monitor_id, monitor_name
        self._discovery = target.home_assistant_discovery
        self._availability = f"{self._prefix}/{monitor_id}/availability"
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"anyanomaly-{monitor_id}-{client_key}")
        if url.username:
            self._client.username_pw_set(urllib.parse.unquote(url.username),
                                         urllib.parse.unquote(url.password or ""))
        if url.scheme == "mqtts":
            self._client.tls_set_context(ssl.create_default_context())
        self._connected = threading.Event()
        self._client.on_connect = lambda *_: self._connected.set()
        self._client.on_disconnect = lambda *_: self._connected.clear()
        self._client.will_set(self._availability, "offline", qos=1, retain=True)
        self._client.reconnect_delay_set(1, 30)
        self._client.connect_async(url.hostname or "localhost", url.port or (8883 if url.scheme == "mqtts" else 1883))
        self._client.loop_start()

    def _topic(self, text: str, leaf: str) -> str:
        return f"{self._prefix}/{self._monitor_id}/{slug(text)}/{leaf}"

    async def _publish(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        def publish() -> None:
            if not self._connected.wait(10):
                raise RuntimeError("not connected to the MQTT broker")
            info = self._client.publish(topic, payload, qos=1, retain=retain)
            info.wait_for_publish(10)
            if not info.is_published():
                raise RuntimeError("the MQTT broker did not acknowledge within 10 s")
        await asyncio.to_thread(publish)

    async def start(self, texts: list[str]) -> None:
        await self._publish(self._availability, "online", retain=True)
        for text in texts:  # no event is open when a monitor starts
            await self._publish(self._topic(text, "state"), "OFF", retain=True)
            if self._discovery:
                object_id = f"anyanomaly_{slug(self._monitor_id)}_{slug(text)}"
                config = {
                    "name": text, "unique_id": object_id, "object_id": object_id, "device_class": "problem",
                    "state_topic": self._topic(text, "state"), "payload_on": "ON", "payload_off": "OFF",
                    "availability_topic": self._availability,
                    "json_attributes_topic": self._topic(text, "event"),
                    "device": {"identifiers": [f"anyanomaly_{self._monitor_id}"],
                               "name": self._monitor_name or f"AnyAnomaly {self._monitor_id}",
                               "manufacturer": "AnyAnomaly"},
                }
                await self._publish(f"homeassistant/binary_sensor/{object_id}/config", json.dumps(config), retain=True)

    async def send(self, event: events_pb2.Event, payload: bytes) -> None:
        await self._publish(self._topic(event.text, "event"), payload)
        state = "OFF" if event.phase == events_pb2.EVENT_PHASE_CLOSE else "ON"
        await self._publish(self._topic(event.text, "state"), state, retain=True)

    async def close(self) -> None:
        if self._connected.is_set():
            with contextlib.suppress(Exception):
                await self._publish(self._availability, "offline", retain=True)
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)  # joins paho's thread


def check_targets(targets: list[monitors_pb2.DeliveryTarget], data_dir: Path) -> None:
    for position, target in enumerate(targets):
        what = f"targets[{position}]"
        kind = target.WhichOneof("target")
        if kind is None:
            raise InvalidInput(f"{what}: set webhook, mqtt or json_lines")
        if kind == "webhook":
            url = urllib.parse.urlsplit(target.webhook.url)
            try:
                url.port  # noqa: B018
            except ValueError:
                url = url._replace(netloc="")
            if url.scheme not in ("http", "https") or not url.hostname:
                raise InvalidInput(f"{what}: webhook url must be http(s)://host/..., got "
                                   f"{echo(redact(target.webhook.url))}")
        elif kind == "mqtt":
            url = urllib.parse.urlsplit(target.mqtt.url)
            try:
                url.port  # noqa: B018  (raises for a port that is not a number in 0..65535)
            except ValueError:
                url = url._replace(netloc="")
            if url.scheme not in ("mqtt", "mqtts") or not url.hostname:
                raise InvalidInput(f"{what}: mqtt url must be mqtt://host[:port] or mqtts://..., got "
                                   f"{echo(redact(target.mqtt.url))}")
            if re.search(r"[#+\x00]", target.mqtt.topic_prefix):
                raise InvalidInput(f"{what}: topic_prefix may not contain '#', '+' or NUL")
        else:
            json_lines_path(target.json_lines.path, data_dir, what)


EXPORTS = "exports"  # JSON-lines files live here, apart from the database and the evidence


def json_lines_path(path: str, data_dir: Path, what: str = "json_lines") -> Path:
    """A JSON-lines file's place: a relative path under <data dir>/exports; never elsewhere."""
    if not path:
        raise InvalidInput(f"{what}: json_lines needs a path (relative to <data dir>/{EXPORTS})")
    root = (data_dir / EXPORTS).resolve()
    resolved = (root / path).resolve()
    if not resolved.is_relative_to(root) or resolved == root:
        raise InvalidInput(f"{what}: json_lines path {echo(path)} is outside <data dir>/{EXPORTS}")
    return resolved


def target_name(target: monitors_pb2.DeliveryTarget) -> str:
    kind = target.WhichOneof("target")
    if kind == "webhook":
        return f"webhook {target.webhook.url}"
    if kind == "mqtt":
        return f"mqtt {redact(target.mqtt.url)} {target.mqtt.topic_prefix}"
    return f"json_lines {target.json_lines.path}"


def target_key(target: monitors_pb2.DeliveryTarget) -> str:
    """A stable id of a target (its cursor's key), from everything but its secret."""
    public = monitors_pb2.DeliveryTarget()
    public.CopyFrom(target)
    if public.HasField("webhook"):
        public.webhook.secret = ""
    return hashlib.sha256(public.SerializeToString(deterministic=True)).hexdigest()[:24]


class DeliveryWorker:
    def __init__(self, store: Store, changes: Changes, monitor: monitors_pb2.Monitor, texts: list[str],
                 target: monitors_pb2.DeliveryTarget, attempts: int, backoff_seconds: float,
                 timeout_seconds: float) -> None:
        self._store = store
        self._changes = changes
        self._monitor_id = monitor.monitor_id
        self._monitor_name = monitor.spec.name
        self._texts = texts
        self.name = target_name(target)
        self._key = f"{monitor.monitor_id}/" + target_key(target)
        self._attempts = attempts
        self._backoff = backoff_seconds
        self._finishing = False
        kind = target.WhichOneof("target")
        self._sink: Sink
        if kind == "webhook":
            self._sink = WebhookSink(target.webhook.url, target.webhook.secret, timeout_seconds)
        elif kind == "mqtt":
            self._sink = MqttSink(target.mqtt, monitor.monitor_id, monitor.spec.name, target_key(target)[:8])
        else:
            self._sink = JsonLinesSink(json_lines_path(target.json_lines.path, store.data_dir))

    async def start_cursor(self) -> None:
        """Where this target starts: the end of the log for a new one (call before any event of
        its monitor can be stored), where it got to for a known one."""
        await self._store.delivery_cursor(self._key, await self._store.last_cursor())

    async def run(self) -> None:
        try:
            await self._sink.start(self._texts)
        except Exception as exc:  # noqa: BLE001  (a broker that is down now is retried per event)
            LOG.warning("%s: %s (events will be retried)", self.name, exc)
        failures = 0
        try:
            while True:
                try:
                    if await self._deliver_stored():
                        return
                    failures = 0
                except (ServiceError, OSError) as exc:  # the store is unreachable: wait, then go on
                    failures += 1
                    LOG.warning("%s: %s; retrying", self.name, exc)
                    await asyncio.sleep(min(MAX_BACKOFF_SECONDS, self._backoff * 2 ** min(failures, 10)))
        finally:
            await asyncio.shield(self._sink.close())

    async def _deliver_stored(self) -> bool:
        """Deliver what is stored after the cursor, or wait for more; True once finishing and done."""
        cursor = await self._store.delivery_cursor(self._key, await self._store.last_cursor())
        mark = self._changes.mark()
        events = await self._store.events_after(cursor, EventFilter(monitor_id=self._monitor_id), 100)
        for event in events:
            await self._deliver(event)
            await self._store.set_delivery_cursor(self._key, event.cursor)
        if events:
            return False
        if self._finishing:
            return True
        await self._changes.wait(mark)
        return False

    def finish(self) -> None:
        """End once every event stored so far is delivered (or dead-lettered)."""
        self._finishing = True

    async def _deliver(self, event: events_pb2.Event) -> None:
        payload = json.dumps(event_json(event, self._monitor_name), separators=(",", ":")).encode()
        error = ""
        for attempt in range(self._attempts):
            if attempt:
                await asyncio.sleep(min(MAX_BACKOFF_SECONDS, self._backoff * 2 ** (attempt - 1)))
            try:
                await self._sink.send(event, payload)
                return
            except Exception as exc:  # noqa: BLE001  (any failure of a receiver: retried, then dead-lettered)
                error = f"{type(exc).__name__}: {exc}"
                LOG.warning("%s: event %s attempt %d failed: %s", self.name, event.event_id, attempt + 1, error)
        await self._store.add_dead_letter(event, self.name, self._attempts, error)
