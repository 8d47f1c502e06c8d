#!/usr/bin/env bash
# Create .venv and install everything the project needs; quick no-op when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-}
if [ -z "$python" ]; then
  # PyTorch wheels exist for 3.11 on every platform we run on; prefer it when present.
  if command -v python3.11 >/dev/null 2>&1; then python=python3.11; else python=python3; fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $($python --version)"
  "$python" -m venv .venv
fi

stamp=.venv/.requirements.sha256
wanted=$(cat requirements/*.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  echo "installing requirements/dev.txt into .venv (the first time takes a few minutes)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements/dev.txt
  echo "$wanted" > "$stamp"
fi

# The browser tests drive Debian's Chromium (Playwright cannot download its own browser here).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium for the browser tests"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: chromium is not installed; the browser tests will be skipped (apt-get install chromium)"
  fi
fi

# The end-to-end tests run the reverse proxy (deploy/nginx) with Debian's nginx, as compose runs the official image.
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's nginx for the proxy tests"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
  else
    echo "note: nginx is not installed; the proxy tests will be skipped (apt-get install nginx)"
  fi
fi

# tests/test_kubernetes.py renders deploy/kubernetes with `kubectl kustomize` (kustomize v5, kubectl >= 1.27).
if ! command -v kubectl >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's kubernetes-client (kubectl) for the manifest tests"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubernetes-client >/dev/null
  else
    echo "note: kubectl is not installed; the Kubernetes manifest tests will be skipped (apt-get install kubernetes-client)"
  fi
fi
if command -v kubectl >/dev/null 2>&1 && ! kubectl version --client 2>/dev/null | grep -q "Kustomize Version: v[5-9]"; then
  echo "note: this kubectl's kustomize is older than v5 (Debian 12's kubernetes-client is 1.20); the Kubernetes"
  echo "      manifest tests will be skipped: install kubectl >= 1.27 (https://kubernetes.io/docs/tasks/tools/)"
fi
