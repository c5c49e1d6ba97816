#!/usr/bin/env bash
# The main job end to end on a built-in default: build an image from a
# generated ext4 filesystem, serve it, netboot an emulated sled over a real
# veth pair, verify. Installs what it needs first. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
exec "${PYTHON:-python3}" -m oxboot.cli.main demo "$@"
