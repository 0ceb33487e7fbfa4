#!/usr/bin/env bash
# Install the non-Python tools the test suite needs (idempotent; safe to re-run).
#   - Khronos glTF-Validator, pinned in tools/gltf-validator/package-lock.json (needs node >= 18, npm).
#   - three.js for the browser check, pinned in tools/browser-check/package-lock.json.
#   - Chromium for the browser check: Debian's `chromium` package, installed with apt-get when
#     missing and we are root (or have password-less sudo); otherwise a note says how.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

command -v node >/dev/null || { echo "install_test_deps: node not found; install Node.js >= 18" >&2; exit 1; }
command -v npm >/dev/null || { echo "install_test_deps: npm not found; install Node.js >= 18 with npm" >&2; exit 1; }

# npm_pinned DIR PACKAGE: `npm ci` in DIR unless PACKAGE is installed at its locked version.
npm_pinned() {
    local dir="$1" package="$2" wanted installed
    wanted="$(node -p "require('$dir/package-lock.json').packages['node_modules/$package'].version")"
    installed="$(node -p "try { require('$dir/node_modules/$package/package.json').version } catch { '' }")"
    if [[ "$installed" == "$wanted" ]]; then
        echo "install_test_deps: $package $installed already installed"
    else
        npm ci --prefix "$dir" --no-audit --no-fund
        echo "install_test_deps: installed $package $wanted"
    fi
}

npm_pinned "$root/tools/gltf-validator" gltf-validator
npm_pinned "$root/tools/browser-check" three

if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
    echo "install_test_deps: chromium already installed"
elif ! command -v apt-get >/dev/null; then
    echo "install_test_deps: chromium not found and no apt-get; install Chromium for tests/test_browser.py" >&2
else
    if [[ "$(id -u)" == 0 ]]; then
        as_root=()
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        as_root=(sudo -n)
    else
        echo "install_test_deps: chromium not found; run \`sudo apt-get install chromium\` for tests/test_browser.py" >&2
        exit 0
    fi
    log="$(mktemp)"
    if "${as_root[@]}" apt-get update -qq >"$log" 2>&1 &&
        "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >>"$log" 2>&1; then
        echo "install_test_deps: installed $(chromium --version 2>/dev/null | head -n 1)"
        rm -f "$log"
    else
        echo "install_test_deps: apt-get install chromium failed (log: $log)" >&2
        [[ -z "${CI:-}" ]] || exit 1  # under CI the browser test must run
    fi
fi
