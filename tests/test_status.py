"""The operator's view of a boot server, without a network: the status
board (each sled's boot, link health, bounded memory) on a clock of the
test's own, the table it renders, the HTTP listener (/metrics, /status,
/healthz) on loopback with a real HTTP client, and `oxboot status`."""

from __future__ import annotations

import io
import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from support.cli import one_line_error, run_cli

from oxboot import build_image
from oxboot.protocol import CHUNK, DATA_HDR_LEN, Session
from oxboot.serve import status as st
from oxboot.serve.events import EventLog
from oxboot.serve.http import StatusListener, health, parse_listen
from oxboot.serve.images import ServedImage, load_image
from oxboot.serve.receiver import FastProgress
from oxboot.serve.status import StatusBoard
from oxboot.serve.table import HEADER, WIDTH, LiveTable, render

SLED = bytes.fromhex("020000000007")
OTHER = bytes.fromhex("020000000008")


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> ServedImage:
    d = tmp_path_factory.mktemp("statusimg")
    (d / "r.raw").write_bytes(bytes(range(256)) * 4096)  # 1 MiB: 1024 chunks
    build_image(d / "r.raw", d / "r.img", target_size=64 << 20, image_name="host-v1")
    return load_image(d / "r.img")


def board() -> tuple[StatusBoard, io.StringIO]:
    out = io.StringIO()
    b = StatusBoard(EventLog(json_mode=True, stream=out),
                    {"link": "lo", "mac": "02:00:00:00:00:01", "read_rate": 8000.0,
                     "workers": 1, "tx_methods": ["sendmmsg"]})
    return b, out


def events(out: io.StringIO, kind: str) -> list[dict]:
    return [e for e in map(json.loads, out.getvalue().splitlines()) if e["event"] == kind]


def fast(offsets: int, reasked: int, repeats: int, last: float, high: int) -> FastProgress:
    """The C core's counters for a sled it answered `offsets` offsets of."""
    return FastProgress(last, high, offsets, reads=offsets // 128, offsets=offsets,
                        retransmits=reasked, repeats=repeats,
                        bytes=offsets * (CHUNK + DATA_HDR_LEN))


def boot(b: StatusBoard, img: ServedImage, mac: bytes, t: float) -> Session:
    """HELLO, OFFER and the first READ (answered in Python) at time t."""
    if not b.images:
        b.image_loaded(0, img)
    b.offered(mac, 0, img, t)
    b.started(mac, 0, img, t + 0.01)
    s = Session(mac, 0, t, t + 0.01, reads=1, offsets_served=128, high_water=128 * CHUNK)
    b.sent_python(mac, 128, 128 * CHUNK)
    b.observe(mac, s, t + 0.01)
    return s


def sled_doc(b: StatusBoard, mac: bytes) -> dict:
    return next(s for s in b.document["sleds"] if s["mac"] == st.mac_str(mac))


def publish(b: StatusBoard, now: float) -> dict:
    return b.publish(now, {"tx_frames": 0, "tx_bytes": 0}, [], None)


def test_a_boot_from_offer_to_finished(image: ServedImage) -> None:
    b, out = board()
    publish(b, 100.0)
    s = boot(b, image, SLED, 100.0)
    publish(b, 100.02)
    d = sled_doc(b, SLED)
    assert d["state"] == "booting" and d["image"]["name"] == "host-v1"
    assert d["bytes"] == 128 * CHUNK and d["offsets"] == 128 and d["reasked"] == 0
    # The C core takes over: the rest of the image, two offsets asked again.
    b.fast(SLED, fast(1024 - 128 + 2, 2, 1, 100.5, image.size))
    b.observe(SLED, s, 100.5)
    b.finished(SLED, 100.5)
    doc = publish(b, 101.0)
    d = sled_doc(b, SLED)
    assert d["state"] == "finished" and d["percent"] == 100.0 and d["bytes"] == image.size
    assert d["bytes_sent"] == image.size + 2 * CHUNK and d["frames_sent"] == 1026
    assert (d["offsets"], d["reasked"], d["repeated_reads"]) == (1026, 2, 1)
    assert d["eta"] is None and d["seconds"] == pytest.approx(0.49)
    assert doc["totals"]["boots_started"] == doc["totals"]["boots_finished"] == 1
    assert doc["totals"]["finished"] == 1 and doc["totals"]["booting"] == 0
    # 2 of 1026 (0.19%) is over 0.1%: the link is reported, once.
    assert [e["mac"] for e in events(out, "lossy_link")] == [st.mac_str(SLED)]


def test_a_silent_boot_is_stalled_then_given_up(image: ServedImage) -> None:
    b, _ = board()
    s = boot(b, image, SLED, 10.0)
    publish(b, 10.0 + st.STALL_SECONDS - 0.5)
    assert sled_doc(b, SLED)["state"] == "booting"
    publish(b, 10.1 + st.STALL_SECONDS + 0.5)
    d = sled_doc(b, SLED)
    assert d["state"] == "stalled" and d["mbps"] == 0 and d["eta"] is None
    assert d["since_last_frame"] == pytest.approx(st.STALL_SECONDS + 0.59, abs=0.06)
    # A READ again: booting again.
    s.last_seen = 15.0
    b.observe(SLED, s, 15.0)
    assert publish(b, 15.1)["totals"]["booting"] == 1
    b.gone(SLED, 80.0)  # the session expired
    assert publish(b, 80.0)["totals"]["stalled"] == 1


def test_ended_sleds_are_dropped_after_some_minutes(image: ServedImage) -> None:
    b, _ = board()
    boot(b, image, SLED, 0.0)
    b.finished(SLED, 1.0)
    boot(b, image, OTHER, 0.0)  # still booting: never dropped
    b.prune(1.0 + st.KEEP_SECONDS - 1)
    assert set(b.sleds) == {SLED, OTHER}
    b.prune(1.0 + st.KEEP_SECONDS + 1)
    assert set(b.sleds) == {OTHER}


def test_the_board_is_bounded(image: ServedImage, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(st, "MAX_SLEDS", 10)
    b, _ = board()
    b.image_loaded(0, image)
    for i in range(50):  # sleds that HELLO and never boot (another checksum)
        b.offered(bytes([2, 0, 0, 0, 1, i]), 0, image, float(i))
    assert len(b.sleds) == 10
    assert min(b.sleds)[-1] == 40  # the most recent ones are kept


def test_a_new_boot_keeps_the_sled_cumulative_counts(image: ServedImage) -> None:
    b, _ = board()
    s = boot(b, image, SLED, 0.0)
    b.fast(SLED, fast(1000, 3, 2, 0.5, image.size))
    b.observe(SLED, s, 0.5)
    b.finished(SLED, 0.5)
    boot(b, image, SLED, 10.0)  # it boots again
    publish(b, 10.1)
    d = sled_doc(b, SLED)
    assert d["state"] == "booting" and d["reasked"] == 0 and d["boots"] == 2
    assert d["total_reasked"] == 3 and d["total_frames_sent"] == 128 + 1000 + 128


def test_c_counts_survive_a_dropped_entry(image: ServedImage) -> None:
    """A sled blocked for a while loses its C entry; a new one counts from
    zero: what the first counted is kept."""
    b, _ = board()
    s = boot(b, image, SLED, 0.0)
    b.fast(SLED, fast(256, 1, 1, 0.2, 384 * CHUNK))
    b.bank_fast(SLED)
    b.fast(SLED, fast(128, 1, 1, 3.0, 512 * CHUNK))
    b.observe(SLED, s, 3.0)
    publish(b, 3.0)
    d = sled_doc(b, SLED)
    assert (d["offsets"], d["reasked"], d["repeated_reads"]) == (128 + 256 + 128, 2, 2)


def test_lossy_link_share_threshold_and_rate_limit(image: ServedImage) -> None:
    b, out = board()
    s = boot(b, image, SLED, 0.0)
    s2 = boot(b, image, OTHER, 0.0)
    # 1 of 1000 offsets asked again is exactly 0.1%: not over it.
    b.fast(SLED, fast(1000, 1, 1, 1.0, 1000 * CHUNK))
    b.fast(OTHER, fast(1000, 0, 0, 1.0, 1000 * CHUNK))
    b.observe(SLED, s, 1.0)
    b.observe(OTHER, s2, 1.0)
    assert events(out, "lossy_link") == []
    b.fast(SLED, fast(1100, 3, 2, 2.0, 1000 * CHUNK))
    b.observe(SLED, s, 2.0)
    (warning,) = events(out, "lossy_link")
    assert warning["mac"] == st.mac_str(SLED) and warning["share"] > st.LOSSY_SHARE
    assert warning["reasked_boot"] == 3 and warning["stall_seconds"] == 3.0
    # More losses within LOSSY_REPEAT seconds: no second warning yet.
    for t in range(3, int(st.LOSSY_REPEAT)):
        b.fast(SLED, fast(1100 + t * 100, 3 + t, 2 + t, float(t), 1000 * CHUNK))
        b.observe(SLED, s, float(t))
    assert len(events(out, "lossy_link")) == 1
    b.fast(SLED, fast(5000, 40, 30, st.LOSSY_REPEAT + 3, 1000 * CHUNK))
    b.observe(SLED, s, st.LOSSY_REPEAT + 3)
    assert len(events(out, "lossy_link")) == 2
    assert all(e["mac"] == st.mac_str(SLED) for e in events(out, "lossy_link"))


def test_lossy_link_text_names_the_cost(image: ServedImage) -> None:
    out = io.StringIO()
    b = StatusBoard(EventLog(stream=out), {"link": "lo"})
    s = boot(b, image, SLED, 0.0)
    b.fast(SLED, fast(500, 5, 2, 1.0, 600 * CHUNK))
    b.observe(SLED, s, 1.0)
    line = out.getvalue()
    assert "lossy_link: 02:00:00:00:00:07" in line and "0.80% " in line  # 5 of 128 + 500
    assert "5 lost frames this boot so far (~5 s: each" in line and "(5 of 628)" in line
    assert "each lost frame stalls the OS client about 1 s" in line
    assert b.log.warnings[-1]["event"] == "lossy_link"


def test_table_fits_80_columns_and_limits_rows(image: ServedImage) -> None:
    b, _ = board()
    for i in range(30):
        s = boot(b, image, bytes([2, 0, 0, 0, 0, i]), 0.0)
        if i % 2:
            b.fast(s.mac, fast(1024, 0, 0, 0.5, image.size))
            b.observe(s.mac, s, 0.5)
            b.finished(s.mac, 0.5)
    b.log.event("warning", "x" * 200)
    doc = publish(b, 1.0)
    lines = render(doc)
    assert all(len(line) < WIDTH for line in lines)
    assert lines[1] == HEADER
    rows = [ln for ln in lines if ln.startswith("02:00:00:00:00:")]
    assert len(rows) == 30
    assert rows[0].split()[2] == "booting"  # the busy ones first
    finished = [r for r in rows if " finished " in r]
    assert len(finished) == 15 and all(" 100% " in r for r in finished)
    assert any(ln.startswith("sleds: 15 booting, 0 stalled, 15 finished") for ln in lines)
    short = render(doc, height=20)
    assert len(short) <= 20 and any("more sleds" in ln for ln in short)
    narrow = render(doc, width=60)
    assert all(len(line) < 60 for line in narrow)


@pytest.mark.parametrize(("text", "want"), [
    ("9187", ("127.0.0.1", 9187)), ("0.0.0.0:80", ("0.0.0.0", 80)),
    ("[::1]:9187", ("::1", 9187)), ("localhost:1", ("localhost", 1)),
])
def test_parse_listen(text: str, want: tuple[str, int]) -> None:
    assert parse_listen(text) == want


@pytest.mark.parametrize("text", ["", "x", ":9187", "1.2.3.4:99999", "::1:9187", "a:b"])
def test_parse_listen_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="--listen"):
        parse_listen(text)


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def test_http_listener(image: ServedImage, tmp_path: Path) -> None:
    b, _ = board()
    s = boot(b, image, SLED, 0.0)
    b.fast(SLED, fast(1024 - 128 + 3, 3, 2, 0.5, image.size))
    b.observe(SLED, s, 0.5)
    b.finished(SLED, 0.5)
    served = tmp_path / "served.img"
    served.write_bytes(b"x")
    images = [{**b.images[0].as_dict(), "path": str(served), "loaded": True}]
    b.publish(1.0, {"tx_frames": 1027, "tx_bytes": 1027 * DATA_HDR_LEN + 5 * CHUNK,
                    "retransmits": 3, "blocked_now": 1}, images, None)
    listener = StatusListener(("127.0.0.1", 0), lambda: b.document)
    try:
        url = listener.url
        code, ctype, body = get(url + "/metrics")
        assert code == 200 and ctype.startswith("text/plain")
        metrics = {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1])
                   for ln in body.splitlines() if ln and not ln.startswith("#")}
        assert metrics["oxboot_boots_finished_total"] == 1
        assert metrics["oxboot_data_frames_sent_total"] == 1027
        assert metrics["oxboot_data_bytes_sent_total"] == 5 * CHUNK
        assert metrics["oxboot_offsets_reasked_total"] == 3
        assert metrics["oxboot_sources_blocked"] == 1
        assert metrics["oxboot_sleds_booting"] == 0
        assert metrics['oxboot_sled_offsets_reasked_total{sled="02:00:00:00:00:07"}'] == 3
        assert metrics['oxboot_sled_data_bytes_sent_total{sled="02:00:00:00:00:07"}'] == \
            image.size + 3 * CHUNK
        assert "process_cpu_seconds_total" in metrics
        code, ctype, body = get(url + "/status")
        assert code == 200 and ctype == "application/json"
        assert json.loads(body)["sleds"][0]["state"] == "finished"
        # The link ("lo") is up and the image file is there.
        assert get(url + "/healthz")[:1] == (200,)
        served.unlink()
        code, _, body = get(url + "/healthz")
        assert code == 503 and "No such file" in json.loads(body)["problems"][0]
        assert get(url + "/nope")[0] == 404
        # Requests at once, from threads: each gets its whole answer.
        codes: list[int] = []
        threads = [threading.Thread(target=lambda: codes.append(get(url + "/metrics")[0]))
                   for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert codes == [200] * 8
    finally:
        listener.close()


def test_health_names_the_link() -> None:
    assert health({}) == ["starting"]
    problems = health({"server": {"link": "oxnosuch0"}, "images": []})
    assert problems == ["link oxnosuch0: No such device"]


def test_oxboot_status_once_and_unreachable(image: ServedImage) -> None:
    b, _ = board()
    s = boot(b, image, SLED, 0.0)
    b.observe(SLED, s, 0.1)
    b.publish(0.2, {}, [], None)
    listener = StatusListener(("127.0.0.1", 0), lambda: b.document)
    try:
        r = run_cli(["oxboot", "status", listener.url])  # stdout is a pipe: once
        assert r.status == 0, r.stderr
        assert "02:00:00:00:00:07 host-v1    booting" in r.stdout
        assert r.stdout.splitlines()[1] == HEADER and "\x1b" not in r.stdout
        r = run_cli(["oxboot", "status", "--json", listener.url + "/status"])
        assert json.loads(r.stdout)["sleds"][0]["mac"] == "02:00:00:00:00:07"
        r = run_cli(["oxboot", "status", listener.url + "/metrics"])
        one_line_error(r)
        assert "not an oxboot status document" in r.stderr
    finally:
        listener.close()
    r = run_cli(["oxboot", "status", listener.url])  # nobody there now
    one_line_error(r)
    assert "cannot reach" in r.stderr and r.status == 1


def test_live_table_redraws_in_place(image: ServedImage) -> None:
    """Each frame: cursor home, every line overwritten and cleared to its
    end, the rest of the screen cleared; never the whole screen erased
    first (that flickers). A failed fetch keeps the last table under a note."""
    b, _ = board()
    boot(b, image, SLED, 0.0)
    publish(b, 0.5)
    answers: list[object] = [b.document, OSError("cannot reach http://x/status: refused")]

    def document() -> dict:
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[return-value]

    out = io.StringIO()
    table = LiveTable(document, out, interval=3600)
    table.draw()
    frame = out.getvalue()
    assert frame.startswith("\x1b[H") and frame.endswith("\x1b[J") and "\x1b[2J" not in frame
    lines = frame[3:-3].split("\x1b[K\r\n")
    assert lines[1] == HEADER and lines[2].startswith("02:00:00:00:00:07 host-v1    booting")
    out.truncate(0)
    out.seek(0)
    table.draw()
    frame = out.getvalue()
    assert frame.startswith("\x1b[H(no fresh status: cannot reach http://x/status: refused)")
    assert "02:00:00:00:00:07 host-v1    booting" in frame  # the last table, still shown
    out.truncate(0)
    out.seek(0)
    table.stop()  # never started: back to the normal screen, the last table left on it
    assert out.getvalue().startswith("\x1b[?25h\x1b[?1049l")
    assert "02:00:00:00:00:07 host-v1    booting" in out.getvalue()


def test_a_boot_keeps_the_version_it_was_offered(image: ServedImage, tmp_path: Path) -> None:
    b, _ = board()
    b.image_loaded(0, image)
    b.offered(SLED, 0, image, 0.0)
    raw = tmp_path / "new.raw"
    raw.write_bytes(bytes(1 << 20))
    build_image(raw, tmp_path / "new.img", target_size=64 << 20, image_name="host-v2")
    new = load_image(tmp_path / "new.img")
    assert b.image_loaded(0, new).version == 2  # replaced on disk after the OFFER
    b.started(SLED, 0, image, 0.1)
    publish(b, 0.2)
    d = sled_doc(b, SLED)
    assert (d["image"]["name"], d["image"]["version"]) == ("host-v1", 1)
    b.offered(OTHER, 0, new, 1.0)
    b.started(OTHER, 0, new, 1.1)
    publish(b, 1.2)
    assert sled_doc(b, OTHER)["image"]["version"] == 2


def test_batch_repair_resends_are_on_the_sleds_row_and_in_the_metrics(
        image: ServedImage) -> None:
    """What batch repair resent to a sled (its lost frames, as the server
    can tell them with repair on) is counted per boot and over its boots."""
    from prometheus_client import CollectorRegistry, generate_latest

    from oxboot.serve.http import MetricsCollector

    b, _ = board()
    s = boot(b, image, SLED, 0.0)
    s.repair.resent = 256  # two rounds of a whole batch
    b.observe(SLED, s, 0.5)
    b.finished(SLED, 0.5)
    s2 = boot(b, image, SLED, 10.0)  # it boots again
    s2.repair.resent = 128
    b.observe(SLED, s2, 10.1)
    doc = publish(b, 10.2)
    d = sled_doc(b, SLED)
    assert d["repair_frames"] == 128 and d["total_repair_frames"] == 384
    registry = CollectorRegistry()
    registry.register(MetricsCollector(lambda: doc))
    text = generate_latest(registry).decode()
    assert 'oxboot_sled_repair_frames_total{sled="02:00:00:00:00:07"} 384.0' in text
