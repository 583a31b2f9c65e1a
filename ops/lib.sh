# Shared helpers for the ops scripts. Source it; do not run it.
set -euo pipefail

FLEETKEEP_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export FLEETKEEP_ROOT

# Swift lives in /opt/swift on our build machines; keep working when PATH does not say so.
if ! command -v swift >/dev/null 2>&1 && [ -x /opt/swift/usr/bin/swift ]; then
  export PATH="/opt/swift/usr/bin:$PATH"
fi
export PATH="$PATH:/usr/sbin:/sbin"

# Release builds link the Swift runtime and Foundation into each program: the binaries then run on a hosting server
# with no Swift installed (only the Debian C libraries), and start faster, with no dozen runtime libraries to load.
release_build() { swift build -c release --static-swift-stdlib "$@"; }
release_bin() { swift build -c release --static-swift-stdlib --show-bin-path; }

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# The hosting fixture generator lives beside the project in shared/tools.
fixture_tool() {
  local candidates=("${FLEETKEEP_FIXTURE:-}" "$FLEETKEEP_ROOT/../shared/tools/hosting-fixture")
  for candidate in "${candidates[@]}"; do
    [ -n "$candidate" ] && [ -x "$candidate" ] && { echo "$candidate"; return 0; }
  done
  die "hosting-fixture not found; set FLEETKEEP_FIXTURE to its path (it ships in shared/tools/)"
}
