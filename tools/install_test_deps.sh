#!/usr/bin/env bash
# Install the non-Python tools the test suite needs (idempotent; safe to re-run).
#   - Khronos glTF-Validator, pinned in tools/gltf-validator/package-lock.json (needs node >= 18, npm).
#   - three.js for the browser check, pinned in tools/browser-check/package-lock.json.
#   - Chromium for the browser check: Debian's `chromium` package, installed with apt-get when
#     missing and we are root (or have password-less sudo); otherwise a note says how.
#   - Blender for the add-on test: Debian's `blender` (3.4) the same way, and numpy < 1.24 for
#     its Python (its glTF add-on needs it) in build/blender-python.
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

# as_root: set the array `as_root` to the prefix that runs a command as root; fails when none.
as_root_prefix() {
    if [[ "$(id -u)" == 0 ]]; then
        as_root=()
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        as_root=(sudo -n)
    else
        return 1
    fi
}

# apt_tool COMMAND PACKAGE TEST: install Debian's PACKAGE unless COMMAND is on PATH. Without
# apt-get or root it says how and carries on; a failed install fails the script under CI.
apt_tool() {
    local command="$1" package="$2" test="$3" log
    if command -v "$command" >/dev/null; then
        echo "install_test_deps: $command already installed"
        return 0
    fi
    if ! command -v apt-get >/dev/null; then
        echo "install_test_deps: $command not found and no apt-get; install $package for $test" >&2
        [[ -z "${CI:-}" ]] || exit 1
        return 0
    fi
    if ! as_root_prefix; then
        echo "install_test_deps: $command not found; run \`sudo apt-get install $package\` for $test" >&2
        [[ -z "${CI:-}" ]] || exit 1
        return 0
    fi
    log="$(mktemp)"
    if "${as_root[@]}" apt-get update -qq >"$log" 2>&1 &&
        "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 \
            "$package" >>"$log" 2>&1; then
        echo "install_test_deps: installed $("$command" --version 2>/dev/null | head -n 1)"
        rm -f "$log"
    else
        echo "install_test_deps: apt-get install $package failed (log: $log)" >&2
        [[ -z "${CI:-}" ]] || exit 1  # under CI these tests must run
    fi
}

apt_tool chromium chromium tests/test_browser.py
apt_tool blender blender tests/test_blender_addon.py

# Debian's Blender 3.4 runs on the system Python without numpy, and its glTF add-on needs
# numpy < 1.24 (np.bool etc.): a wheel for Blender's Python goes into build/blender-python,
# which tests/test_blender_addon.py puts on Blender's PYTHONPATH.
blender_site="$root/build/blender-python"
if command -v blender >/dev/null; then
    blender_python="$(blender -b --factory-startup --python-expr \
        'import sys; print("PYVER=%d.%d" % sys.version_info[:2])' 2>/dev/null | sed -n 's/^PYVER=//p')"
    if [[ -z "$blender_python" ]]; then
        echo "install_test_deps: cannot run blender to find its Python version" >&2
        [[ -z "${CI:-}" ]] || exit 1
    elif PYTHONPATH="$blender_site" blender -b --factory-startup --python-exit-code 1 --python-expr \
        'import numpy; assert tuple(map(int, numpy.__version__.split(".")[:2])) < (1, 24)' >/dev/null 2>&1; then
        echo "install_test_deps: numpy for Blender's Python $blender_python already installed"
    else
        pip="$(command -v pip3 || command -v pip || true)"
        [[ -n "$pip" ]] || pip="$root/.venv/bin/pip"
        if "$pip" install -q --target "$blender_site" --upgrade --no-deps --only-binary=:all: \
            --python-version "$blender_python" --implementation cp --platform manylinux2014_x86_64 \
            "numpy<1.24"; then
            echo "install_test_deps: installed numpy<1.24 for Blender's Python $blender_python in $blender_site"
        else
            echo "install_test_deps: cannot install numpy<1.24 for Blender's Python $blender_python" >&2
            [[ -z "${CI:-}" ]] || exit 1
        fi
    fi
fi
