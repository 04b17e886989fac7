#!/usr/bin/env bash
# The Debian packages the tests start for real: PostgreSQL (a second storage backend), Mosquitto
# (MQTT delivery), GStreamer's RTSP server (a live camera), Node.js and Chromium (the web
# console's browser test). Installs only what is missing.
set -euo pipefail
packages=(mosquitto python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-tools gstreamer1.0-plugins-base
          gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav
          chromium chromium-driver)
# Node.js and npm (the Node client test, buf) may come from elsewhere too.
command -v node >/dev/null && command -v npm >/dev/null || packages+=(nodejs npm)
# PostgreSQL may come from elsewhere (initdb on PATH); otherwise Debian's.
command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || packages+=(postgresql)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
