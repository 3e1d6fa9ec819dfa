#!/usr/bin/env bash
# The README's test command: installs what the tests need on a fresh Debian machine, then runs the
# whole workspace's tests. Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the integration tests drive as real peers:
#   openssl, curl   — TLS interop tests (mesh-tls) handshake with `openssl s_client` and `curl --cert`.
#   prometheus      — the observability test scrapes our exposition endpoint with a real Prometheus.
#   dnsmasq-base    — the DNS discovery tests (mesh-discovery/tests/dnsmasq.rs) resolve through a
#                     real dnsmasq, started by each test on 127.0.0.1 (no system service is used).
#   chromium        — the dashboard test (tests/demo.rs) loads the demo's dashboard in headless Chromium.
#   python3-venv    — for PyPI's kubernetes-validate below.
need=()
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
[ -x /usr/sbin/dnsmasq ] || command -v dnsmasq >/dev/null 2>&1 || need+=(dnsmasq-base)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v python3 >/dev/null 2>&1 && python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ "${#need[@]}" -gt 0 ]; then
  echo "test.sh: installing Debian packages: ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  # prometheus pulls no service start here: policy-rc.d-free containers just unpack it.
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The Kubernetes manifests test (tests/k8s.rs) validates every manifest against the Kubernetes
# schemas with PyPI's kubernetes-validate, installed into a virtualenv under target/ (the test
# looks there first, then on PATH).
if ! command -v kubernetes-validate >/dev/null 2>&1 && [ ! -x target/k8s-venv/bin/kubernetes-validate ]; then
  echo "test.sh: installing kubernetes-validate (PyPI) into target/k8s-venv"
  python3 -m venv target/k8s-venv
  target/k8s-venv/bin/pip install --quiet kubernetes-validate
fi

cargo test --workspace "$@"
