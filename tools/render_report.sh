#!/usr/bin/env bash
# Render a report.html (or any page) to a PNG with Debian's headless Chromium, installing it if missing.
#   tools/render_report.sh runs/demo/report/report.html report.png [WIDTHxHEIGHT]
set -euo pipefail
page=$1 png=$2 size=${3:-1280x2400}
if ! command -v chromium >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync --user-data-dir="$profile" \
  --window-size="${size/x/,}" --screenshot="$png" "file://$(realpath "$page")" 2>/dev/null
test -s "$png"
echo "$png"
