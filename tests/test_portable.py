"""The split between the portable core (image tools) and the Linux network
core: what a build without the network core says and still offers."""

from __future__ import annotations

import importlib

import pytest

from oxboot import _native
from oxboot._native import HAS_NET, lib


def test_has_net_says_whether_the_network_functions_are_there() -> None:
    for name in ("ox_tx_data", "ox_rx_data_wait", "ox_rx_serve_wait", "ox_set_blocklist",
                 "ox_txring_open", "ox_rxring_open", "ox_xsk_open"):
        assert hasattr(lib, name) == HAS_NET, name
    # The image tools' functions are in every build.
    for name in ("ox_sha256", "ox_deflate_chunk", "ox_inflate_piece", "ox_adler32_combine",
                 "ox_build_data", "ox_parse_data", "ox_read_offsets", "ox_writeback"):
        assert hasattr(lib, name), name


@pytest.mark.parametrize(("module", "prog"), [
    ("oxboot.cli.bootserver", "bootserver"),
    ("oxboot.cli.netboot", "oxboot netboot"),
    ("oxboot.cli.demo", "oxboot demo"),
])
def test_network_commands_refuse_in_one_line_without_the_network_core(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        module: str, prog: str) -> None:
    monkeypatch.setattr(_native, "HAS_NET", False)
    main = importlib.import_module(module).main
    assert main(["eth0", "image.img", "any"], prog=prog) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(f"Error: {prog} needs Linux: ")
