"""The server's HTTP listener (``bootserver --listen``): ``/metrics`` in the
Prometheus text format, ``/status`` as one JSON document, ``/healthz``.

It runs on threads of its own and reads only the status document the
server loop publishes (:attr:`~oxboot.serve.status.StatusBoard.document`,
swapped in whole): a request never takes the frame path's lock, and a
scrape costs the loop nothing but the GIL for the moments it runs.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from oxboot.serve.status import DEFAULT_STATUS_PORT, link_problem

#: Where the listener binds when --listen names only a port.
DEFAULT_HOST = "127.0.0.1"

Document = Callable[[], dict[str, object]]


def parse_listen(text: str) -> tuple[str, int]:
    """``ADDR:PORT``, ``[IPV6]:PORT`` or a bare ``PORT`` (on 127.0.0.1:
    loopback unless told otherwise; DEFAULT_STATUS_PORT is the usual one);
    ValueError with the reason."""
    text = text.strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = DEFAULT_HOST, text
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"--listen {text!r}: write an IPv6 address in brackets, "
                         f"e.g. [::1]:{DEFAULT_STATUS_PORT}")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen {text!r}: not a port number: {port!r}")
    if not host:
        raise ValueError(f"--listen {text!r}: no address before the port")
    return host, int(port)


def _family(host: str) -> socket.AddressFamily:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:  # a host name: what it resolves to first
        return socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][0]


#: The server's totals as counters: (metric, help, key in the document's totals).
TOTAL_COUNTERS = (
    ("oxboot_boots_started_total", "Boots started (first READ of a session).", "boots_started"),
    ("oxboot_boots_finished_total", "Boots finished (FINISHED received).", "boots_finished"),
    ("oxboot_boots_reset_total", "RESETs sent (a sled made to start over).", "boots_reset"),
    ("oxboot_data_frames_sent_total", "DATA frames sent.", "frames_sent"),
    ("oxboot_data_bytes_sent_total",
     "DATA payload bytes sent (image bytes; each resend counted again).", "bytes_sent"),
    ("oxboot_reads_total", "READs answered.", "reads"),
    ("oxboot_offsets_reasked_total",
     "Offsets a READ asked for again (lost DATA, as the sleds see it).", "offsets_reasked"),
    ("oxboot_repeated_reads_total", "READs that asked again for at least one offset.",
     "repeated_reads"),
    ("oxboot_lossy_link_warnings_total", "lossy_link warnings given.", "lossy_link_warnings"),
    ("oxboot_sources_blocked_total", "Hosts blocked for flooding.", "sources_blocked_total"),
    ("oxboot_rx_frames_total", "Frames the receive sockets got.", "rx_frames"),
    ("oxboot_rx_dropped_total", "Frames the kernel dropped for a full receive queue.", "rx_drops"),
    ("oxboot_rx_policed_total", "Frames over a host's rate, dropped.", "rx_policed"),
    ("oxboot_tx_errors_total", "Failed DATA transmissions.", "tx_errors"),
)


class MetricsCollector(Collector):
    """The status document as Prometheus metrics (prometheus-client calls
    :meth:`collect` on each scrape, on the listener's thread)."""

    def __init__(self, document: Document) -> None:
        self.document = document

    def collect(self) -> Iterator[Metric]:
        doc = self.document()
        totals: dict = doc.get("totals", {})  # type: ignore[assignment]
        server: dict = doc.get("server", {})  # type: ignore[assignment]
        images: list = doc.get("images", [])  # type: ignore[assignment]
        sleds: list = doc.get("sleds", [])  # type: ignore[assignment]

        def gauge(name: str, doc_: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc_, value=value)

        for name, text, key in TOTAL_COUNTERS:
            yield CounterMetricFamily(name, text, value=totals.get(key, 0))
        yield gauge("oxboot_sources_blocked", "Hosts whose frames are dropped now (flooding).",
                    totals.get("sources_blocked", 0))
        yield gauge("oxboot_sleds_booting", "Sleds booting now (stalled ones included).",
                    totals.get("booting", 0) + totals.get("stalled", 0))
        states = GaugeMetricFamily("oxboot_sleds", "Sleds on the board by state.",
                                   labels=["state"])
        for state in ("offered", "booting", "stalled", "finished", "reset"):
            states.add_metric([state], totals.get(state, 0))
        yield states
        yield gauge("oxboot_link_up", "1 while the link is up with a carrier.",
                    1 if server.get("link_up") else 0)
        yield gauge("oxboot_uptime_seconds", "Seconds since the server started.",
                    server.get("uptime", 0))
        info = GaugeMetricFamily("oxboot_image_info", "Images served (1: loaded and "
                                 "servable, 0: not now).",
                                 labels=["index", "name", "path", "sha256", "version"])
        size = GaugeMetricFamily("oxboot_image_size_bytes", "Raw image size.",
                                 labels=["index"])
        for img in images:
            index = str(img.get("index", ""))
            info.add_metric([index, str(img.get("name", "")), str(img.get("path", "")),
                             str(img.get("sha256", "")), str(img.get("version", ""))],
                            1 if img.get("loaded") else 0)
            size.add_metric([index], img.get("size", 0))
        yield info
        yield size
        # Per sled: kept on the board some minutes after it ends, then gone
        # from here too, so a server that runs for months stays bounded.
        # (family, its help, what of a sled's row it reports)
        per_sled = [
            (CounterMetricFamily, "oxboot_sled_data_bytes_sent_total",
             "DATA payload bytes sent to the sled.", lambda s: s.get("total_bytes_sent", 0)),
            (CounterMetricFamily, "oxboot_sled_offsets_reasked_total",
             "Offsets the sled asked for again.", lambda s: s.get("total_reasked", 0)),
            (CounterMetricFamily, "oxboot_sled_repeated_reads_total",
             "The sled's READs that asked again.", lambda s: s.get("total_repeated_reads", 0)),
            (CounterMetricFamily, "oxboot_sled_repair_frames_total",
             "DATA resent to the sled by batch repair (its next READ was late).",
             lambda s: s.get("total_repair_frames", 0)),
            (GaugeMetricFamily, "oxboot_sled_progress_ratio",
             "How much of its image the sled has asked for.",
             lambda s: float(s.get("percent") or 0) / 100),
            (GaugeMetricFamily, "oxboot_sled_booting",
             "1 while the sled boots (stalled included).",
             lambda s: 1 if s.get("state") in ("booting", "stalled") else 0),
        ]
        for family, name, text, value in per_sled:
            metric = family(name, text, labels=["sled"])
            for s in sleds:
                metric.add_metric([str(s.get("mac"))], value(s))
            yield metric


def health(doc: dict[str, object]) -> list[str]:
    """What keeps the server from serving every image it is configured
    with (empty: healthy). The link and the image files are looked at now;
    the rest is as of the last document."""
    if not doc:
        return ["starting"]
    problems = []
    server: dict = doc.get("server", {})  # type: ignore[assignment]
    problem = link_problem(str(server.get("link", "")))
    if problem is not None:
        problems.append(problem)
    for img in doc.get("images", []):  # type: ignore[attr-defined]
        path = str(img.get("path"))
        if not img.get("loaded"):
            problems.append(f"image {path} cannot be served")
            continue
        try:
            os.stat(path)
        except PermissionError:
            pass  # after --user: the copy loaded at start is served
        except OSError as e:
            problems.append(f"image {path}: {e.strerror}")
    return problems


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "oxboot"

    def do_GET(self) -> None:  # (the name http.server calls)
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        doc = self.server.document()
        if path == "/metrics":
            self._reply(200, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)
        elif path == "/status":
            self._json(200, doc)
        elif path == "/healthz":
            problems = health(doc)
            self._json(503 if problems else 200,
                       {"healthy": not problems, "problems": problems})
        elif path == "/":
            self._reply(200, b"oxboot bootserver: /metrics /status /healthz\n",
                        "text/plain; charset=utf-8")
        else:
            self._reply(404, b"not found: try /metrics, /status or /healthz\n",
                        "text/plain; charset=utf-8")

    def _json(self, status: int, obj: object) -> None:
        self._reply(status, json.dumps(obj, sort_keys=True).encode() + b"\n",
                    "application/json")

    def _reply(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # a scrape every few seconds is not an event


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    document: Document
    registry: CollectorRegistry


class StatusListener:
    """/metrics, /status and /healthz on `address`, served on threads of
    its own until :meth:`close`."""

    def __init__(self, address: tuple[str, int], document: Document) -> None:
        host, port = address
        server_class = type("_Server", (_Server,), {"address_family": _family(host)})
        self.httpd: _Server = server_class((host, port), _Handler)
        self.httpd.document = document
        registry = CollectorRegistry(auto_describe=False)
        registry.register(MetricsCollector(document))
        ProcessCollector(registry=registry)  # the server's CPU, memory, open files
        self.httpd.registry = registry
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.5,),
                                        name="oxboot-http", daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)
