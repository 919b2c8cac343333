#!/usr/bin/env bash
# `make start`: write data/teleport.yaml (once) and run a one-process cluster on embedded
# defaults: SQLite cluster state, audit log and session recordings on disk, all in data/.
set -euo pipefail
BIN=${1:-.venv/bin}
DATA=${2:-data}
cd "$(dirname "$0")/.."
mkdir -p "$DATA"
chmod 700 "$DATA"
DATA=$(cd "$DATA" && pwd)
CONFIG="$DATA/teleport.yaml"
DIAG=${TELEPORT_DIAG_ADDR:-127.0.0.1:3000}
if [ ! -f "$CONFIG" ]; then
  "$BIN/teleport" configure --data-dir "$DATA/state" --cluster-name "${CLUSTER_NAME:-quickstart}" \
    --nodename "${NODENAME:-$(hostname)}" --public-addr "${PUBLIC_ADDR:-127.0.0.1:3080}" -o "$CONFIG"
fi
cat <<EOT

teleport-py quick start
  config       $CONFIG   (edit it, then restart)
  data         $DATA/state
  health       curl -s http://$DIAG/readyz
  metrics      curl -s http://$DIAG/metrics
  plugins      $BIN/teleport plugins
  admin        $BIN/tctl -c $CONFIG status
  add a user   $BIN/tctl -c $CONFIG users add joe --roles=access --logins=\$(whoami)
  log in       $BIN/tsh login --proxy=${PUBLIC_ADDR:-127.0.0.1:3080} --insecure --user=joe
Stop with Ctrl-C.

EOT
exec "$BIN/teleport" start --config "$CONFIG" --diag-addr "$DIAG"
