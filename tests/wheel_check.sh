#!/usr/bin/env bash
# The wheel alone: built with `python -m build`, installed in a fresh venv with nothing else of
# this repository, it trains a small model and exports it as a web page and as C (both need the
# files the wheel carries: the page, the engine's sources and its WebAssembly build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m build --wheel --outdir "$tmp/dist" . > "$tmp/build.log" 2>&1 || { tail -20 "$tmp/build.log"; exit 1; }
python3.11 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q -c constraints.txt "$tmp"/dist/*.whl
cd "$tmp"
venv/bin/squeezenet --quiet train --epochs 1 --train-size 512 --out run
venv/bin/squeezenet export run --format web --out site --json web.json
venv/bin/squeezenet export run --format c --out c --json c.json --check-images 64
test -f site/engine.wasm && test -f site/model.sqz && test -f c/model.c && test -f c/sqz.c
venv/bin/python -c "import json; r = json.load(open('c.json')); assert r['ram_bytes'] > 0 and r['flash_bytes'] > 0, r"
echo "wheel check: $(basename "$tmp"/dist/*.whl) installs alone and exports web and c"
