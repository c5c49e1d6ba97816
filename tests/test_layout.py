"""The architecture's rules, checked on the source tree.

* The sans-I/O state machines (``oxboot/protocol/``) change only through
  their own methods: no module outside the package assigns to, deletes or
  stores into their attributes (an AST scan; ``self.x = ...`` inside a
  class of its own is that class's business).
* Test files do not import each other: what they share lives in
  ``tests/support/``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = ROOT / "oxboot" / "protocol"


def _state_attributes() -> set[str]:
    """Attributes of the protocol's classes: ``self.x = ...`` in their
    methods and the fields of their dataclasses."""
    names: set[str] = set()
    for path in PROTOCOL.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                        names.add(item.target.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) \
                    and isinstance(node.value, ast.Name) and node.value.id == "self":
                names.add(node.attr)
    return names


def _stores(tree: ast.AST, attrs: set[str]) -> Iterator[tuple[int, str]]:
    """(line, text) of every write into ``<not self>.attr`` for attr in `attrs`."""
    def target_attr(node: ast.AST) -> ast.Attribute | None:
        # x.attr = ..., x.attr[k] = ..., x.attr.y = ... all change x.attr.
        while isinstance(node, ast.Subscript | ast.Attribute):
            if isinstance(node, ast.Attribute) and node.attr in attrs and not (
                    isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                return node
            node = node.value
        return None

    for node in ast.walk(tree):
        targets: list[ast.AST] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        elif isinstance(node, ast.Delete):
            targets = list(node.targets)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in ("setattr", "delattr") and len(node.args) >= 2 \
                and isinstance(node.args[1], ast.Constant) and node.args[1].value in attrs:
            yield node.lineno, ast.unparse(node)
            continue
        for t in targets:
            for part in (t.elts if isinstance(t, ast.Tuple) else [t]):
                if (hit := target_attr(part)) is not None:
                    yield node.lineno, ast.unparse(hit)


# Writes that only share a name with protocol state: the C core's struct
# for the sled's next batch (ox_rx_next) has a next_offset of its own.
NOT_PROTOCOL_STATE = {("oxboot/sled/rx.py", "self._next.next_offset")}


def _io_modules() -> list[Path]:
    return [p for p in sorted((ROOT / "oxboot").rglob("*.py")) if PROTOCOL not in p.parents]


def test_state_attributes_are_found() -> None:
    attrs = _state_attributes()
    # The scan must see the fields the I/O layer once wrote directly.
    assert {"images", "sessions", "last_seen", "high_water", "next_offset", "eof",
            "bytes_received", "write_extent"} <= attrs


@pytest.mark.parametrize("source", [
    "proto.images = ()", "s.last_seen = 1.0", "sess.eof = True", "a.b.high_water += 1",
    "server.sessions[mac] = x", "del server.sessions[mac]", "setattr(sess, 'eof', 1)",
    "x, sess.next_offset = 1, 2",
])
def test_the_scan_catches_writes(source: str) -> None:
    assert list(_stores(ast.parse(source), _state_attributes())), source


@pytest.mark.parametrize("source", [
    "self.images = []", "n = sess.next_offset",
    "sess.absorb_fast_path(received=1, extent=1, eof=False)",
    "server.replace_offer(0, offer)",
])
def test_the_scan_passes_reads_and_own_state(source: str) -> None:
    assert not list(_stores(ast.parse(source), _state_attributes())), source


def test_io_layer_changes_state_machines_only_through_methods() -> None:
    attrs = _state_attributes()
    found = [f"{path.relative_to(ROOT)}:{line}: {text}"
             for path in _io_modules()
             for line, text in _stores(ast.parse(path.read_text()), attrs)
             if (str(path.relative_to(ROOT)), text) not in NOT_PROTOCOL_STATE]
    assert not found, "writes into protocol state outside oxboot/protocol/:\n" + "\n".join(found)


def test_test_files_do_not_import_each_other() -> None:
    tests = ROOT / "tests"
    test_modules = {p.stem for p in tests.rglob("test_*.py")}
    found = []
    for path in tests.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            for name in names:
                if set(name.split(".")) & test_modules:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    assert not found, "test files importing test files:\n" + "\n".join(found)


#: The modules that call the C core (``lib``): the typed API over its
#: portable half, and one wrapper class per network mechanism.
C_CALLERS = {"oxboot/_native.py", "oxboot/link.py", "oxboot/serve/receiver.py",
             "oxboot/sled/rx.py"}


def test_only_the_wrappers_call_the_c_core() -> None:
    found = []
    for path in sorted((ROOT / "oxboot").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in ("oxboot._native",
                                                                     "oxboot._core") \
                    and any(a.name in ("lib", "ffi") for a in node.names) \
                    and rel not in C_CALLERS:
                found.append(f"{rel}:{node.lineno}")
    assert not found, "C core called outside its wrappers:\n" + "\n".join(found)


#: What each part of the package may import of the rest (README, Layout).
#: The sans-I/O protocol knows nothing of links, loops or files; the image
#: pipeline nothing of the network; each I/O side only the protocol and the
#: link, never the other side.
MAY_IMPORT = {
    "format": set(),
    "levels": set(),
    "errors": set(),
    "protocol": {"_native", "format"},
    "codec": {"_native", "format", "levels", "pipeline"},
    "build": {"_native", "codec", "format", "fsutil", "pipeline", "progress"},
    "verify": {"_native", "codec", "format", "fsutil", "pipeline", "progress"},
    "link": {"_native", "errors", "protocol"},
    "serve": {"_native", "errors", "format", "link", "privileges", "progress", "protocol",
              "verify"},
    "sled": {"_native", "fsutil", "link", "protocol", "verify"},
}
#: Nothing in the protocol waits, sleeps, reads a clock or touches a socket.
PROTOCOL_NEVER = {"socket", "select", "selectors", "threading", "time", "os", "subprocess",
                  "asyncio"}


def _imports(path: Path) -> set[str]:
    """Modules `path` imports, dotted, with ``from oxboot import x`` as oxboot.x."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            if node.module == "oxboot":
                found.update(f"oxboot.{a.name}" for a in node.names)
    return found


@pytest.mark.parametrize("unit", sorted(MAY_IMPORT))
def test_each_part_imports_only_what_it_may(unit: str) -> None:
    base = ROOT / "oxboot"
    files = sorted((base / unit).rglob("*.py")) if (base / unit).is_dir() else [base / f"{unit}.py"]
    assert files and all(f.is_file() for f in files), unit
    wrong = []
    for path in files:
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "oxboot" and len(parts) > 1 and parts[1] != unit \
                    and parts[1] not in MAY_IMPORT[unit] | {"__version__"}:
                wrong.append(f"{path.relative_to(ROOT)}: {name}")
            if unit == "protocol" and parts[0] in PROTOCOL_NEVER:
                wrong.append(f"{path.relative_to(ROOT)}: {name} (the protocol is sans-I/O)")
    assert not wrong, "\n".join(wrong)


def test_test_files_have_unique_names() -> None:
    """pytest imports test files by their basename (rootdir conftest, no
    packages): two of one name in different folders cannot both run."""
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
