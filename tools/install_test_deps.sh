#!/usr/bin/env bash
# Install the non-Python tools the test suite needs (idempotent; safe to re-run).
#   - Khronos glTF-Validator, pinned in tools/gltf-validator/package-lock.json (needs node >= 18, npm).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
validator_dir="$root/tools/gltf-validator"

command -v node >/dev/null || { echo "install_test_deps: node not found; install Node.js >= 18" >&2; exit 1; }
command -v npm >/dev/null || { echo "install_test_deps: npm not found; install Node.js >= 18 with npm" >&2; exit 1; }

wanted="$(node -p "require('$validator_dir/package-lock.json').packages['node_modules/gltf-validator'].version")"
installed="$(node -p "try { require('$validator_dir/node_modules/gltf-validator/package.json').version } catch { '' }")"
if [[ "$installed" == "$wanted" ]]; then
    echo "install_test_deps: gltf-validator $installed already installed"
else
    npm ci --prefix "$validator_dir" --no-audit --no-fund
    echo "install_test_deps: installed gltf-validator $wanted"
fi
