#!/usr/bin/env bash
# A local Kubernetes control plane on loopback: etcd + kube-apiserver (no controller-manager, scheduler or
# kubelet: objects are stored, never run), with the audit webhook backend pointed at a kaudit bridge over TLS and
# the log backend at once.
#
#   control-plane.sh build     build the binaries once (build.sh; cached outside the work tree)
#   control-plane.sh up        make certificates, tokens and kubeconfigs (once per state folder), start etcd and
#                              kube-apiserver, wait on /readyz, create the namespaces' default ServiceAccounts
#   control-plane.sh prepare   only the certificates, tokens and kubeconfigs (what a bridge needs first)
#   control-plane.sh stop-apiserver   stop kube-apiserver only (etcd keeps the objects; `up` starts it again)
#   control-plane.sh down      stop both (SIGTERM, then SIGKILL after 20 s)
#   control-plane.sh status    say what runs
#   control-plane.sh env       print shell lines: KUBECONFIG, the binaries' folder, the audit log path
#
# Settings (environment; defaults in brackets):
#   KAUDIT_K8S_STATE        state folder [$KAUDIT_VAR/k8s, KAUDIT_VAR defaults to ./var]
#   KAUDIT_K8S_PORT         kube-apiserver's secure port [6443]; etcd uses the two ports below it (client, peer)
#   KAUDIT_K8S_CLUSTER      the cluster's name in kaudit [local]
#   KAUDIT_K8S_POLICY       audit policy file [infra/kubernetes/audit-policy.yaml]
#   KAUDIT_K8S_WEBHOOK      webhook kubeconfig: "token" or "cert" (the files in infra/kubernetes/, with only the
#                           server URL and file paths filled in), a path to a kubeconfig of your own, or "none" [token]
#   KAUDIT_K8S_BRIDGE_URL   the bridge's base URL [https://127.0.0.1:8765]; the webhook posts to <url>/audit/<cluster>
#   KAUDIT_K8S_BATCH_WAIT   --audit-webhook-batch-max-wait [1s]
#   KAUDIT_K8S_LOG_MAXSIZE  --audit-log-maxsize in MB [100]
#   KAUDIT_K8S_EXTRA_ARGS   more kube-apiserver flags
#
# Files in the state folder that a bridge needs: pki/bridge.crt + pki/bridge.key (its serving certificate, for
# 127.0.0.1 and localhost, signed by pki/ca.crt), bridge-tokens.yaml (the cluster's webhook token), pki/ca.crt as
# the --client-ca of the certificate variant (the client certificate's CN is the cluster name).
# Users (static tokens, tokens.csv): admin (system:masters), alice and bob (group developers), carol (no
# groups); kubeconfigs per user in kubeconfig/<user>.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=versions.env
. "$here/versions.env"
cache="${KAUDIT_K8S_CACHE:-$HOME/.cache/kaudit/k8s}"
BIN="$cache/$KUBERNETES_VERSION/bin"
KAUDIT_VAR="${KAUDIT_VAR:-$repo/var}"
STATE="${KAUDIT_K8S_STATE:-$KAUDIT_VAR/k8s}"
PORT="${KAUDIT_K8S_PORT:-6443}"
ETCD_PORT=$((PORT - 2))
ETCD_PEER_PORT=$((PORT - 1))
CLUSTER="${KAUDIT_K8S_CLUSTER:-local}"
POLICY="${KAUDIT_K8S_POLICY:-$repo/infra/kubernetes/audit-policy.yaml}"
WEBHOOK="${KAUDIT_K8S_WEBHOOK:-token}"
BRIDGE_URL="${KAUDIT_K8S_BRIDGE_URL:-https://127.0.0.1:8765}"
BATCH_WAIT="${KAUDIT_K8S_BATCH_WAIT:-1s}"
LOG_MAXSIZE="${KAUDIT_K8S_LOG_MAXSIZE:-100}"
PKI="$STATE/pki"
log() { echo "control-plane: $*" >&2; }

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

make_pki() {
  mkdir -p "$PKI" "$STATE/kubeconfig"
  [ -f "$PKI/ca.crt" ] && return 0
  log "making certificates and keys in $PKI"
  (
    cd "$PKI"
    umask 077
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 -subj "/CN=kaudit-local-ca" 2>/dev/null
    serving() {  # name cn sans
      openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "/CN=$2" 2>/dev/null
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$1.crt" -days 3650 \
        -extfile <(printf "subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n" "$3") 2>/dev/null
      rm -f "$1.csr"
    }
    serving apiserver kube-apiserver "IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.0.0.1"
    serving bridge kaudit-bridge "IP:127.0.0.1,DNS:localhost"
    # the webhook's client certificate (variant "cert"): the bridge reads the cluster name from its CN
    openssl req -newkey rsa:2048 -nodes -keyout webhook-client.key -out webhook-client.csr -subj "/CN=$CLUSTER" 2>/dev/null
    openssl x509 -req -in webhook-client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out webhook-client.crt \
      -days 3650 -extfile <(echo "extendedKeyUsage=clientAuth") 2>/dev/null
    rm -f webhook-client.csr
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    chmod 644 ./*.crt sa.pub
  )
}

make_tokens() {
  [ -f "$STATE/tokens.csv" ] && return 0
  rnd() { openssl rand -hex 16; }
  (
    umask 077
    {
      echo "$(rnd),admin,uid-admin,\"system:masters\""
      echo "$(rnd),alice,uid-alice,\"developers\""
      echo "$(rnd),bob,uid-bob,\"developers\""
      echo "$(rnd),carol,uid-carol"
    } > "$STATE/tokens.csv"
    rnd > "$STATE/webhook-token"
    printf 'clusters:\n  %s: %s\n' "$CLUSTER" "$(cat "$STATE/webhook-token")" > "$STATE/bridge-tokens.yaml"
  )
  while IFS=, read -r token user _; do
    cat > "$STATE/kubeconfig/$user" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: $CLUSTER
    cluster:
      server: https://127.0.0.1:$PORT
      certificate-authority: $PKI/ca.crt
users:
  - name: $user
    user:
      token: $token
contexts:
  - name: $user@$CLUSTER
    context:
      cluster: $CLUSTER
      user: $user
current-context: $user@$CLUSTER
EOF
    chmod 600 "$STATE/kubeconfig/$user"
  done < "$STATE/tokens.csv"
}

# The webhook kubeconfig: the project's shipped file with only the server URL and the file paths filled in,
# so what infra/kubernetes/README.md tells users to deploy is what runs here.
webhook_config() {
  local src out="$STATE/webhook-kubeconfig.yaml"
  case "$WEBHOOK" in
    none) return 0 ;;
    token) src="$repo/infra/kubernetes/webhook-kubeconfig-token.yaml" ;;
    cert) src="$repo/infra/kubernetes/webhook-kubeconfig-cert.yaml" ;;
    *) cp "$WEBHOOK" "$out"; echo "$out"; return 0 ;;
  esac
  sed -e "s#server: https://kaudit-bridge.kaudit.svc:8765/audit/prod-eu#server: $BRIDGE_URL/audit/$CLUSTER#" \
      -e "s#/etc/kubernetes/kaudit/ca.crt#$PKI/ca.crt#" \
      -e "s#/etc/kubernetes/kaudit/token#$STATE/webhook-token#" \
      -e "s#/etc/kubernetes/kaudit/client.crt#$PKI/webhook-client.crt#" \
      -e "s#/etc/kubernetes/kaudit/client.key#$PKI/webhook-client.key#" "$src" > "$out"
  grep -q "$BRIDGE_URL/audit/$CLUSTER" "$out" || { log "could not fill in the server URL of $src"; exit 2; }
  echo "$out"
}

wait_ready() {  # url pidfile what seconds
  local deadline=$(( $(date +%s) + $4 ))
  until curl -sf --cacert "$PKI/ca.crt" "$1" >/dev/null 2>&1 || curl -sf "$1" >/dev/null 2>&1; do
    if ! pid_alive "$2"; then log "$3 exited; last lines of its log:"; tail -n 25 "$STATE/$3.log" >&2; exit 2; fi
    if [ "$(date +%s)" -ge "$deadline" ]; then log "$3 not ready after $4 s; see $STATE/$3.log"; exit 2; fi
    sleep 0.2
  done
}

up() {
  bash "$here/build.sh"
  mkdir -p "$STATE/audit"
  make_pki
  make_tokens
  if pid_alive "$STATE/kube-apiserver.pid"; then log "kube-apiserver already runs (pid $(cat "$STATE/kube-apiserver.pid"))"; return 0; fi
  local t0; t0=$(date +%s%3N)
  if ! pid_alive "$STATE/etcd.pid"; then
    setsid "$BIN/etcd" --name local --data-dir "$STATE/etcd" \
      --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
      --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
      --initial-cluster "local=http://127.0.0.1:$ETCD_PEER_PORT" --log-level warn \
      --quota-backend-bytes $((2 * 1024 * 1024 * 1024)) > "$STATE/etcd.log" 2>&1 < /dev/null &
    echo $! > "$STATE/etcd.pid"
    wait_ready "http://127.0.0.1:$ETCD_PORT/health" "$STATE/etcd.pid" etcd 60
  fi
  local webhook_args=() wh
  wh="$(webhook_config)"
  if [ -n "$wh" ]; then
    webhook_args=(--audit-webhook-config-file="$wh" --audit-webhook-batch-max-wait="$BATCH_WAIT"
                  --audit-webhook-initial-backoff=1s --audit-webhook-version=audit.k8s.io/v1)
  fi
  cp "$POLICY" "$STATE/audit-policy.yaml"
  # shellcheck disable=SC2086
  setsid "$BIN/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$PORT" \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" --token-auth-file="$STATE/tokens.csv" \
    --service-account-issuer=https://kubernetes.default.svc --service-account-key-file="$PKI/sa.pub" \
    --service-account-signing-key-file="$PKI/sa.key" --service-cluster-ip-range=10.0.0.0/24 \
    --authorization-mode=Node,RBAC --allow-privileged=true --endpoint-reconciler-type=none \
    --audit-policy-file="$STATE/audit-policy.yaml" \
    --audit-log-path="$STATE/audit/audit.log" --audit-log-format=json --audit-log-maxsize="$LOG_MAXSIZE" \
    --audit-log-maxbackup=100 --audit-log-version=audit.k8s.io/v1 \
    "${webhook_args[@]}" ${KAUDIT_K8S_EXTRA_ARGS:-} > "$STATE/kube-apiserver.log" 2>&1 < /dev/null &
  echo $! > "$STATE/kube-apiserver.pid"
  wait_ready "https://127.0.0.1:$PORT/readyz" "$STATE/kube-apiserver.pid" kube-apiserver 120
  # No controller-manager: the ServiceAccount admission plugin needs each namespace's default ServiceAccount.
  for ns in default kube-system kube-public kube-node-lease; do
    "$BIN/kubectl" --kubeconfig "$STATE/kubeconfig/admin" -n "$ns" get serviceaccount default >/dev/null 2>&1 ||
      "$BIN/kubectl" --kubeconfig "$STATE/kubeconfig/admin" -n "$ns" create serviceaccount default >/dev/null
  done
  log "kube-apiserver $KUBERNETES_VERSION ready on https://127.0.0.1:$PORT in $(( ($(date +%s%3N) - t0) / 100 ))00 ms (webhook: $([ -n "$wh" ] && echo "$BRIDGE_URL/audit/$CLUSTER ($WEBHOOK)" || echo none); log: $STATE/audit/audit.log)"
}

stop_one() {  # name
  local f="$STATE/$1.pid" pid i
  pid_alive "$f" || { rm -f "$f"; return 0; }
  pid="$(cat "$f")"
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$pid" 2>/dev/null && { log "$1 did not stop in 20 s: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; }
  rm -f "$f"
}

case "${1:-}" in
  build) bash "$here/build.sh" ;;
  prepare) mkdir -p "$STATE/audit"; make_pki; make_tokens; log "certificates, tokens and kubeconfigs in $STATE" ;;
  up) up ;;
  stop-apiserver) stop_one kube-apiserver ;;
  down) stop_one kube-apiserver; stop_one etcd; log "stopped ($STATE)" ;;
  status)
    for n in etcd kube-apiserver; do
      if pid_alive "$STATE/$n.pid"; then echo "$n: running (pid $(cat "$STATE/$n.pid"))"; else echo "$n: stopped"; fi
    done ;;
  env)
    echo "export KUBECONFIG=$STATE/kubeconfig/admin"
    echo "export PATH=$BIN:\$PATH"
    echo "# audit log: $STATE/audit/audit.log" ;;
  *) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
