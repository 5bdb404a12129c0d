#!/usr/bin/env bash
# The quick start: build the image once, make sure a daemon runs, put this
# repository in a new VM (banger vm run), run a command in it, and print what
# to do next. Called by `make run`.
set -euo pipefail
cd "$(dirname "$0")/.."
banger=banger

if [[ $(id -u) -ne 0 ]]; then
  echo "make run needs root (image build bootstraps a Debian rootfs): try 'sudo make run'" >&2
  exit 1
fi
# `make install` put banger on PATH; a daemon from an older build is
# replaced so the quick start always runs this checkout's code.
running=$(banger version --json 2>/dev/null | sed -n 's/.*"daemon": "\(.*\)".*/\1/p')
if [[ -n $running && $running != "$(banger version --json | sed -n 's/.*"cli": "\(.*\)".*/\1/p')" ]]; then
  echo "restarting the daemon (it runs $running)"
  kill "$(banger version --json | sed -n 's/.*"daemon_pid": \([0-9]*\).*/\1/p')" || true
  sleep 1
fi

# The daemon: reuse one that answers, otherwise start one in the background.
if ! $banger version --json 2>/dev/null | grep -q '"daemon"'; then
  logdir=${BANGER_HOME:-/var/lib/banger}/logs
  mkdir -p "$logdir"
  echo "starting banger daemon (log: $logdir/daemon.log)"
  nohup $banger daemon >>"$logdir/daemon.log" 2>&1 &
  for _ in $(seq 1 100); do
    $banger version --json 2>/dev/null | grep -q '"daemon"' && break
    sleep 0.1
  done
fi
$banger doctor || true

# The agent image (Node.js, opencode, claude, pi); a no-op when its inputs
# did not change. It is staged when an older image is the default, so name
# it explicitly.
built=$($banger image build)
echo "$built"
image=$(sed -n 's/^image \([a-z0-9-]*\) .*/\1/p' <<<"$built" | head -n1)
: "${image:?image build printed no image name}"

# The main job: this checkout (any git repository works: pass its path)
# at /root/repo in a new VM, exactly as it is on disk. vm run prints the
# next steps with the real VM name.
name=${VM_NAME:-quickstart-$(date +%H%M%S)}
repo=${REPO:-$PWD}
$banger vm run "$repo" --name "$name" --image "$image"
echo
echo "\$ banger vm exec -w /root/repo $name -- git status --short --branch"
$banger vm exec -w /root/repo "$name" -- git status --short --branch
echo
echo "The next steps for $name are printed above; 'banger vm show $name' shows the VM and its workspace."
