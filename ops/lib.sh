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

# An agent state directory enrolled into a throwaway controller and holding an active `standard` licence, for scripts
# that push off-site (a licensed feature). Usage: licensed_agent_state BIN DIR ROOT; prints the state directory and
# leaves the controller serving in the background (its pid in DIR/controller.pid, the caller stops it).
licensed_agent_state() {
  local bin="$1" dir="$2" root="$3"
  mkdir -p "$dir"
  "$bin/fleetkeep-controller" init --data "$dir/controller" >/dev/null
  "$bin/fleetkeep-controller" serve --data "$dir/controller" --listen 127.0.0.1:0 > "$dir/controller.log" 2>&1 &
  echo $! > "$dir/controller.pid"
  for _ in $(seq 200); do grep -q "listening on" "$dir/controller.log" 2>/dev/null && break; sleep 0.05; done
  local token key
  token="$("$bin/fleetkeep-controller" token create --data "$dir/controller")"
  "$bin/fleetkeep-agent" enroll "$token" --state "$dir/state" --root "$root" >/dev/null
  key="$("$bin/fleetkeep-controller" licence issue --customer "Bench" --email bench@example.invalid --tier standard \
          --max-servers 1 --data "$dir/controller" 2>/dev/null)"
  "$bin/fleetkeep-agent" licence activate "$key" --state "$dir/state" --root "$root" >/dev/null
  echo "$dir/state"
}
