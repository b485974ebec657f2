#!/usr/bin/env bash
# End-to-end test of KubeMQTT on a real cluster (see e2e/README.md):
#
#   build both images -> load them -> helm install the chart -> apply
#   e2e/broker.yaml (examples/broker.yaml without a load balancer) and
#   examples/user-device.yaml (and a listener user of its own) -> wait for
#   Ready -> the device publishes over TLS with its Secret's credentials and
#   the listener receives it -> rotate the device's password (old and new
#   work during the grace window, only the new one after it) -> delete
#   everything: the broker's CA Secrets stay until deleted, then nothing is
#   left.
#
# Usage: e2e/run.sh            (uses the cluster KUBECONFIG points at)
#        E2E_CREATE_CLUSTER=kind e2e/run.sh   (or k3d: makes a throwaway one)
#
# Without a cluster that answers it prints "e2e: SKIPPED: ..." and exits 0,
# unless E2E_REQUIRE_CLUSTER=1, which makes that a failure (exit 1).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHART="$ROOT/charts/kubemqtt-operator"
PATH="$PATH:$ROOT/.tools/bin"

# --- settings (environment) ---------------------------------------------------
CREATE_CLUSTER="${E2E_CREATE_CLUSTER:-}"             # "", kind or k3d
REQUIRE_CLUSTER="${E2E_REQUIRE_CLUSTER:-0}"          # 1: no cluster is a failure
CLUSTER_NAME="${E2E_CLUSTER_NAME:-kubemqtt-e2e}"     # of a cluster made here
KEEP="${E2E_KEEP:-0}"                                # 1: leave everything on failure
RELEASE="${E2E_RELEASE:-kubemqtt-e2e}"
OPERATOR_NAMESPACE="${E2E_OPERATOR_NAMESPACE:-kubemqtt-e2e-system}"
NAMESPACE="${E2E_NAMESPACE:-kubemqtt-e2e}"           # where the broker and user go
WATCH="${E2E_WATCH:-namespace}"                      # namespace (Roles) or all (ClusterRole)
IMAGE_TAG="${E2E_IMAGE_TAG:-e2e}"
IMAGE_REGISTRY="${E2E_IMAGE_REGISTRY:-}"             # push there instead of loading
BUILD="${E2E_BUILD:-1}"                              # 0: the images already exist
BROKER_FILE="${E2E_BROKER_FILE:-$ROOT/e2e/broker.yaml}"
USER_FILE="${E2E_USER_FILE:-$ROOT/examples/user-device.yaml}"
TOPIC="${E2E_TOPIC:-}"                               # default: devices/<user>/e2e
LISTENER="${E2E_LISTENER:-e2e-listener}"             # MqttUser subscribing to devices/#
GRACE_SECONDS="${E2E_GRACE_SECONDS:-60}"             # rotation.graceMinutes of the example
LOCAL_PORT="${E2E_LOCAL_PORT:-18883}"                # port-forward to the TLS listener
TIMEOUT="${E2E_TIMEOUT:-300}"                        # seconds for each wait

MANAGED_BY="app.kubernetes.io/managed-by=kubemqtt-operator"
OWNED_KINDS="statefulsets,services,secrets,configmaps,poddisruptionbudgets,pods,persistentvolumeclaims"

WORK="$(mktemp -d)"
CREATED_CLUSTER=0
INSTALLED_CRDS=0
CREATED_NAMESPACES=()
PORT_FORWARD_PID=""
FINISHED=0

say() { printf 'e2e: %s\n' "$*"; }
fail() {
    printf 'e2e: FAILED: %s\n' "$*" >&2
    exit 1
}

# No cluster: skip, or fail when one is required.
no_cluster() {
    if [ "$REQUIRE_CLUSTER" = "1" ]; then
        fail "no Kubernetes cluster answers ($*), and E2E_REQUIRE_CLUSTER=1"
    fi
    say "SKIPPED: no Kubernetes cluster answers ($*); set KUBECONFIG or E2E_CREATE_CLUSTER=kind|k3d"
    FINISHED=1
    exit 0
}

# wait_until SECONDS WHAT COMMAND...: runs COMMAND every 2 s until it
# succeeds; fails after SECONDS.
wait_until() {
    local seconds="$1" what="$2"
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            fail "timed out after ${seconds}s waiting until $what"
        fi
        sleep 2
    done
}

need() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 || fail "$tool is needed (see e2e/README.md)"
    done
}

# --- cleanup --------------------------------------------------------------------
stop_port_forward() {
    if [ -n "$PORT_FORWARD_PID" ]; then
        kill "$PORT_FORWARD_PID" 2>/dev/null || true
        wait "$PORT_FORWARD_PID" 2>/dev/null || true
        PORT_FORWARD_PID=""
    fi
}

diagnose() {
    say "state at the failure:"
    kubectl get mqttbrokers,mqttusers -A -o wide 2>&1 || true
    kubectl -n "$NAMESPACE" get all,secrets,events 2>&1 | tail -n 60 || true
    kubectl -n "$OPERATOR_NAMESPACE" logs "deployment/$RELEASE-kubemqtt-operator" --tail=100 2>&1 || true
}

cleanup() {
    local status=$?
    stop_port_forward
    if [ "$FINISHED" != "1" ] && [ "$status" -ne 0 ] && kubectl version --request-timeout=5s >/dev/null 2>&1; then
        diagnose
        if [ "$KEEP" = "1" ]; then
            say "E2E_KEEP=1: leaving the cluster as it is"
            rm -rf "$WORK"
            return
        fi
        say "cleaning up after the failure"
        kubectl -n "$NAMESPACE" delete --ignore-not-found --wait=false -f "$USER_FILE" >/dev/null 2>&1 || true
        kubectl -n "$NAMESPACE" delete --ignore-not-found --wait=false "mqttuser/$LISTENER" >/dev/null 2>&1 || true
        kubectl -n "$NAMESPACE" delete --ignore-not-found --wait=false -f "$BROKER_FILE" >/dev/null 2>&1 || true
        helm uninstall "$RELEASE" -n "$OPERATOR_NAMESPACE" >/dev/null 2>&1 || true
        if [ "$INSTALLED_CRDS" = "1" ]; then
            kubectl delete --ignore-not-found -f "$CHART/crds/" >/dev/null 2>&1 || true
        fi
        local namespace
        for namespace in "${CREATED_NAMESPACES[@]}"; do
            kubectl delete namespace "$namespace" --ignore-not-found --wait=false >/dev/null 2>&1 || true
        done
    fi
    if [ "$CREATED_CLUSTER" = "1" ] && [ "$KEEP" != "1" ]; then
        say "deleting the $CREATE_CLUSTER cluster $CLUSTER_NAME"
        case "$CREATE_CLUSTER" in
            kind) kind delete cluster --name "$CLUSTER_NAME" >/dev/null 2>&1 || true ;;
            k3d) k3d cluster delete "$CLUSTER_NAME" >/dev/null 2>&1 || true ;;
        esac
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# --- 1. a cluster -------------------------------------------------------------
create_cluster() {
    case "$CREATE_CLUSTER" in
        "") return ;;
        kind | k3d) ;;
        *) fail "E2E_CREATE_CLUSTER must be kind or k3d, not '$CREATE_CLUSTER'" ;;
    esac
    command -v "$CREATE_CLUSTER" >/dev/null 2>&1 ||
        no_cluster "E2E_CREATE_CLUSTER=$CREATE_CLUSTER but $CREATE_CLUSTER is not installed"
    export KUBECONFIG="$WORK/kubeconfig"
    say "creating the $CREATE_CLUSTER cluster $CLUSTER_NAME"
    CREATED_CLUSTER=1
    case "$CREATE_CLUSTER" in
        kind) kind create cluster --name "$CLUSTER_NAME" --kubeconfig "$KUBECONFIG" --wait 180s ;;
        k3d)
            k3d cluster create "$CLUSTER_NAME" --wait --kubeconfig-update-default=false \
                --k3s-arg '--disable=traefik@server:0'
            k3d kubeconfig get "$CLUSTER_NAME" >"$KUBECONFIG"
            ;;
    esac
}

check_cluster() {
    command -v kubectl >/dev/null 2>&1 || no_cluster "kubectl is not installed"
    local answer
    if ! answer="$(kubectl version --request-timeout=5s 2>&1 </dev/null)"; then
        no_cluster "kubectl version: $(printf '%s' "$answer" | tail -n 1)"
    fi
    say "cluster: $(kubectl config current-context 2>/dev/null || echo '?')"
}

# --- 2. images ------------------------------------------------------------------
OPERATOR_IMAGE=""
BROKER_IMAGE=""

build_and_load_images() {
    local prefix="${IMAGE_REGISTRY:+$IMAGE_REGISTRY/}kubemqtt"
    OPERATOR_IMAGE="$prefix/kubemqtt-operator:$IMAGE_TAG"
    BROKER_IMAGE="$prefix/kubemqtt-broker:$IMAGE_TAG"
    if [ "$BUILD" = "1" ]; then
        need docker
        say "building $OPERATOR_IMAGE and $BROKER_IMAGE"
        docker build -f "$ROOT/Dockerfile.operator" -t "$OPERATOR_IMAGE" "$ROOT"
        docker build -f "$ROOT/Dockerfile.broker" -t "$BROKER_IMAGE" "$ROOT"
    fi
    local context
    context="$(kubectl config current-context 2>/dev/null || true)"
    if [ -n "$IMAGE_REGISTRY" ]; then
        docker push "$OPERATOR_IMAGE"
        docker push "$BROKER_IMAGE"
    elif [ "$CREATE_CLUSTER" = "kind" ] || [[ "$context" == kind-* ]]; then
        local name="${context#kind-}"
        [ "$CREATE_CLUSTER" = "kind" ] && name="$CLUSTER_NAME"
        kind load docker-image --name "$name" "$OPERATOR_IMAGE" "$BROKER_IMAGE"
    elif [ "$CREATE_CLUSTER" = "k3d" ] || [[ "$context" == k3d-* ]]; then
        local name="${context#k3d-}"
        [ "$CREATE_CLUSTER" = "k3d" ] && name="$CLUSTER_NAME"
        k3d image import --cluster "$name" "$OPERATOR_IMAGE" "$BROKER_IMAGE"
    else
        say "note: context $context is neither kind nor k3d and E2E_IMAGE_REGISTRY is unset;" \
            "assuming its nodes see this machine's images (Docker Desktop, minikube docker-env)"
    fi
}

# --- 3. install -----------------------------------------------------------------
ensure_namespace() {
    if ! kubectl get namespace "$1" >/dev/null 2>&1; then
        kubectl create namespace "$1" >/dev/null
        CREATED_NAMESPACES+=("$1")
    fi
}

crd_names() {
    local file
    for file in "$CHART"/crds/*.yaml; do
        kubectl create --dry-run=client -o jsonpath='{.metadata.name}{"\n"}' -f "$file"
    done
}

install_chart() {
    ensure_namespace "$OPERATOR_NAMESPACE"
    ensure_namespace "$NAMESPACE"
    INSTALLED_CRDS=1
    local crd
    for crd in $(crd_names); do
        if kubectl get crd "$crd" >/dev/null 2>&1; then
            say "note: CRD $crd exists already; it is left in place at the end"
            INSTALLED_CRDS=0
        fi
    done
    local watch=()
    case "$WATCH" in
        namespace) watch=(--set "operator.watchNamespaces={$NAMESPACE}") ;;
        all) ;;
        *) fail "E2E_WATCH must be namespace or all, not '$WATCH'" ;;
    esac
    say "installing the chart as $RELEASE in $OPERATOR_NAMESPACE (watching: $WATCH)"
    helm install "$RELEASE" "$CHART" --namespace "$OPERATOR_NAMESPACE" \
        --set "image.repository=${OPERATOR_IMAGE%:*}" --set "image.tag=$IMAGE_TAG" \
        --set "operator.brokerImage=$BROKER_IMAGE" --set operator.logFormat=text \
        "${watch[@]}" --wait --timeout "${TIMEOUT}s"
}

# --- 4. broker and user ------------------------------------------------------------
name_in() {
    kubectl create --dry-run=client -o jsonpath='{.metadata.name}' -f "$1"
}

# secret_key USER KEY: a key of the user's credentials Secret, decoded.
secret_key() {
    kubectl -n "$NAMESPACE" get secret "$1-mqtt-credentials" -o "jsonpath={.data.${2//./\\.}}" | base64 -d
}

# A user of the test's own, allowed only to read what devices publish: the
# example device may publish under devices/<user>/ but not subscribe there.
apply_listener() {
    kubectl -n "$NAMESPACE" apply -f - <<EOF
apiVersion: kubemqtt.io/v1alpha1
kind: MqttUser
metadata:
  name: $LISTENER
spec:
  brokerRef:
    name: $BROKER
  authentication:
    type: password
  acl:
    - action: subscribe
      topic: "devices/#"
EOF
}

# --- 5. clients -----------------------------------------------------------------
port_forward_alive() {
    [ -n "$PORT_FORWARD_PID" ] && kill -0 "$PORT_FORWARD_PID" 2>/dev/null &&
        (exec 3<>"/dev/tcp/127.0.0.1/$LOCAL_PORT") 2>/dev/null
}

# (Re)starts the port-forward to the broker's TLS port: it follows one pod,
# and stops when that pod goes away (a rolling restart).
ensure_port_forward() {
    port_forward_alive && return 0
    stop_port_forward
    kubectl -n "$NAMESPACE" port-forward "service/$BROKER" "$LOCAL_PORT:$TLS_PORT" \
        >"$WORK/port-forward.log" 2>&1 &
    PORT_FORWARD_PID=$!
    local tries
    for tries in $(seq 1 30); do
        port_forward_alive && return 0
        kill -0 "$PORT_FORWARD_PID" 2>/dev/null || break
        sleep 1
    done
    say "port-forward did not come up (tried ${tries:-0} times):"
    cat "$WORK/port-forward.log" >&2
    stop_port_forward
    return 1
}

# The certificate is checked against the CA and the name in the Secret
# here, once; the mosquitto clients below then connect to 127.0.0.1 with
# --insecure, which skips only that host name check (the chain is still
# verified against ca.crt).
verify_server_certificate() {
    if ! command -v openssl >/dev/null 2>&1; then
        say "note: openssl not found; the server certificate's host name is not checked"
        return 0
    fi
    ensure_port_forward || fail "cannot port-forward to service/$BROKER port $TLS_PORT"
    openssl s_client -connect "127.0.0.1:$LOCAL_PORT" -servername "$HOST" \
        -verify_hostname "$HOST" -CAfile "$WORK/ca.crt" -verify_return_error \
        </dev/null >"$WORK/s_client.log" 2>&1 ||
        { cat "$WORK/s_client.log" >&2; fail "the broker's certificate does not verify for $HOST with the user's ca.crt"; }
    say "the broker's certificate verifies for $HOST with the Secret's ca.crt"
}

mqtt_options() {
    printf '%s\n' -h 127.0.0.1 -p "$LOCAL_PORT" --cafile "$WORK/ca.crt" --insecure \
        -V mqttv311 -t "$TOPIC" -q 1
}

# login_works USER PASSWORD: a retained message the user publishes reaches
# the listener (retained, so that the subscriber cannot come too late).
login_works() {
    ensure_port_forward || return 1
    local options message
    mapfile -t options < <(mqtt_options)
    message="e2e-$RANDOM-$SECONDS"
    timeout 20 mosquitto_pub "${options[@]}" -u "$1" -P "$2" -i "e2e-pub-$RANDOM" -r -m "$message" \
        >"$WORK/pub.log" 2>&1 || return 1
    local received
    received="$(timeout 20 mosquitto_sub "${options[@]}" -u "$LISTENER_USERNAME" -P "$LISTENER_PASSWORD" \
        -i "e2e-sub-$RANDOM" -C 1 -W 15 2>"$WORK/sub.log")" || return 1
    [ "$received" = "$message" ]
}

# login_refused USER PASSWORD: the broker refuses the connection.
login_refused() {
    ensure_port_forward || return 1
    local options
    mapfile -t options < <(mqtt_options)
    if timeout 20 mosquitto_pub "${options[@]}" -u "$1" -P "$2" -i "e2e-old-$RANDOM" -m refused \
        >"$WORK/refused.log" 2>&1; then
        return 1
    fi
    grep -qi "not authori[sz]ed\|bad user name or password\|refused" "$WORK/refused.log"
}

external_host_known() {
    [ -n "$(secret_key "$USER_NAME" external-host)" ]
}

password_changed() {
    local now
    now="$(secret_key "$USER_NAME" password)"
    [ -n "$now" ] && [ "$now" != "$OLD_PASSWORD" ]
}

# --- 6. teardown ------------------------------------------------------------------
nothing_managed_left() {
    local left
    left="$(kubectl get "$OWNED_KINDS" -A -l "$MANAGED_BY" -o name)" || return 1
    [ -z "$left" ]
}

only_ca_secrets_left() {
    local left
    left="$(kubectl get "$OWNED_KINDS" -A -l "$MANAGED_BY" -o name | sort)" || return 1
    [ "$left" = "$(printf 'secret/%s\nsecret/%s' "$BROKER-ca" "$BROKER-clients-ca" | sort)" ]
}

release_objects_left() {
    kubectl get clusterroles,clusterrolebindings -l "app.kubernetes.io/instance=$RELEASE" -o name
    kubectl get roles,rolebindings,deployments,services,serviceaccounts -A \
        -l "app.kubernetes.io/instance=$RELEASE" -o name
}

kubemqtt_crds_left() {
    kubectl get crd -o name | grep '\.kubemqtt\.io$' || true
}

# --- 6. a broker cluster: scale-up, rebalance, rolling restart ------------------
# A 3-replica broker on a managed NATS (examples/broker-cluster.yaml made
# small, without its autoscaler, which would take the replica count back)
# with persistent QoS 1 subscribers and a QoS 1 publisher (mosquitto clients
# in a pod, through the broker's in-cluster Service): scaled from 3 to 4
# replicas, the operator must spread the clients within 10 % of the mean; a
# rolling restart (a pod annotation changed) must lose no acknowledged
# message.
CLUSTER="${E2E_CLUSTER:-1}"                          # 0: skip this scenario
CLUSTER_FILE="${E2E_CLUSTER_FILE:-}"                 # default: the broker below
CLUSTER_CLIENTS="${E2E_CLUSTER_CLIENTS:-40}"         # persistent subscribers
CLUSTER_TOLERANCE="${E2E_CLUSTER_TOLERANCE:-10}"     # percent of the mean
CLIENTS_IMAGE="${E2E_CLIENTS_IMAGE:-docker.io/library/eclipse-mosquitto:2.0.20}"
CLUSTER_USER="e2e-cluster-client"
LOAD_POD="e2e-cluster-load"

write_cluster_broker() {
    cat >"$1" <<YAML
apiVersion: kubemqtt.io/v1alpha1
kind: MqttBroker
metadata:
  name: e2e-cluster
spec:
  replicas: 3
  service:
    type: ClusterIP
  cluster:
    nats:
      managed:
        storage: {size: 1Gi}
YAML
}

apply_cluster_user() {
    kubectl -n "$NAMESPACE" apply -f - <<YAML
apiVersion: kubemqtt.io/v1alpha1
kind: MqttUser
metadata:
  name: $CLUSTER_USER
spec:
  brokerRef:
    name: $1
  authentication:
    type: password
  acl:
    - action: publish
      topic: "e2e/cluster/#"
    - action: subscribe
      topic: "e2e/cluster/#"
YAML
}

# The load: CLUSTER_CLIENTS persistent QoS 1 subscribers (mosquitto_sub
# reconnects by itself, resuming its session) and one publisher sending
# numbered QoS 1 messages, each written down once acknowledged
# (mosquitto_pub exits 0). Once /tmp/stop exists it waits for the last
# deliveries and prints, per subscriber, the acknowledged numbers it never
# received.
start_load() {
    kubectl -n "$NAMESPACE" apply -f - <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: $LOAD_POD
spec:
  restartPolicy: Never
  containers:
    - name: clients
      image: $CLIENTS_IMAGE
      env:
        - {name: CLIENTS, value: "$CLUSTER_CLIENTS"}
        - {name: MQTT_USER, valueFrom: {secretKeyRef: {name: $CLUSTER_USER-mqtt-credentials, key: username}}}
        - {name: MQTT_PASSWORD, valueFrom: {secretKeyRef: {name: $CLUSTER_USER-mqtt-credentials, key: password}}}
        - {name: MQTT_HOST, valueFrom: {secretKeyRef: {name: $CLUSTER_USER-mqtt-credentials, key: host}}}
        - {name: MQTT_PORT, valueFrom: {secretKeyRef: {name: $CLUSTER_USER-mqtt-credentials, key: tls-port}}}
      volumeMounts:
        - {name: credentials, mountPath: /credentials, readOnly: true}
      command: ["/bin/sh", "-c"]
      args:
        - |
          set -u
          tls="-h \$MQTT_HOST -p \$MQTT_PORT --cafile /credentials/ca.crt -u \$MQTT_USER -P \$MQTT_PASSWORD"
          i=0
          while [ "\$i" -lt "\$CLIENTS" ]; do
            # shellcheck disable=SC2086
            mosquitto_sub \$tls -i "e2e-sub-\$i" -c -q 1 -t e2e/cluster/seq -F %p >"/tmp/received-\$i" 2>/dev/null &
            i=\$((i + 1))
          done
          sleep 10
          n=0
          : >/tmp/acked
          while [ ! -e /tmp/stop ]; do
            n=\$((n + 1))
            # shellcheck disable=SC2086
            if mosquitto_pub \$tls -i e2e-pub -q 1 -t e2e/cluster/seq -m "\$n" 2>/dev/null; then echo "\$n" >>/tmp/acked; fi
            sleep 0.2
          done
          sleep 30
          sort -n /tmp/acked >/tmp/acked.sorted
          lost=0
          i=0
          while [ "\$i" -lt "\$CLIENTS" ]; do
            sort -nu "/tmp/received-\$i" >/tmp/r
            missing=\$(comm -23 /tmp/acked.sorted /tmp/r | wc -l)
            [ "\$missing" -eq 0 ] || echo "LOST subscriber \$i: \$(comm -23 /tmp/acked.sorted /tmp/r | head -5 | tr '\n' ' ')"
            lost=\$((lost + missing))
            i=\$((i + 1))
          done
          echo "RESULT acked=\$(wc -l </tmp/acked) subscribers=\$CLIENTS lost=\$lost"
  volumes:
    - name: credentials
      secret: {secretName: $CLUSTER_USER-mqtt-credentials}
YAML
}

load_result() {
    kubectl -n "$NAMESPACE" logs "$LOAD_POD" 2>/dev/null | grep -E '^(RESULT|LOST)'
}

ready_replicas_are() {
    [ "$(kubectl -n "$NAMESPACE" get "mqttbroker/$1" -o 'jsonpath={.status.readyReplicas}')" = "$2" ]
}

# pod_connections POD: kubemqtt_clients_connected of a broker pod, through
# the API server's pod proxy (the broker image has no shell).
pod_connections() {
    kubectl get --raw "/api/v1/namespaces/$NAMESPACE/pods/$1:8080/proxy/metrics" |
        awk '$1 == "kubemqtt_clients_connected" {print $2}'
}

# connections_balanced BROKER: every pod within CLUSTER_TOLERANCE % of the
# mean (at least one connection); prints the counts.
connections_balanced() {
    local pod counts=()
    for pod in $(kubectl -n "$NAMESPACE" get pods -l "app.kubernetes.io/instance=$1,app.kubernetes.io/name=kubemqtt-broker" -o name); do
        counts+=("$(pod_connections "${pod#pod/}")")
    done
    say "connections per replica: ${counts[*]}"
    printf '%s\n' "${counts[@]}" | awk -v tol="$CLUSTER_TOLERANCE" '
        {c[NR] = $1; sum += $1}
        END {
            mean = sum / NR; allowed = mean * tol / 100; if (allowed < 1) allowed = 1
            for (i = 1; i <= NR; i++) if (c[i] - mean > allowed || mean - c[i] > allowed) exit 1
        }'
}

cluster_scenario() {
    if [ "$CLUSTER" != "1" ]; then
        say "cluster scenario skipped (E2E_CLUSTER=$CLUSTER)"
        return 0
    fi
    if [ -z "$CLUSTER_FILE" ]; then
        CLUSTER_FILE="$WORK/broker-cluster.yaml"
        write_cluster_broker "$CLUSTER_FILE"
    fi
    [ -f "$CLUSTER_FILE" ] || fail "$CLUSTER_FILE is missing"
    local cluster
    cluster="$(name_in "$CLUSTER_FILE")"
    say "cluster scenario: $cluster from $CLUSTER_FILE, $CLUSTER_CLIENTS persistent QoS 1 subscribers"
    kubectl -n "$NAMESPACE" apply -f "$CLUSTER_FILE"
    kubectl -n "$NAMESPACE" patch "mqttbroker/$cluster" --type merge -p '{"spec":{"replicas":3}}'
    apply_cluster_user "$cluster"
    kubectl -n "$NAMESPACE" wait --for=condition=Ready "mqttbroker/$cluster" --timeout "${TIMEOUT}s"
    kubectl -n "$NAMESPACE" wait --for=condition=Ready "mqttuser/$CLUSTER_USER" --timeout "${TIMEOUT}s"
    start_load
    kubectl -n "$NAMESPACE" wait --for=condition=Ready "pod/$LOAD_POD" --timeout "${TIMEOUT}s"
    sleep 20

    say "scaling $cluster to 4 replicas"
    kubectl -n "$NAMESPACE" scale "mqttbroker/$cluster" --replicas=4
    wait_until "$TIMEOUT" "4 replicas are ready" ready_replicas_are "$cluster" 4
    local scaled_at=$SECONDS
    wait_until "$TIMEOUT" "connections are within ${CLUSTER_TOLERANCE} % of the mean" connections_balanced "$cluster"
    say "balanced $((SECONDS - scaled_at)) s after the fourth replica was ready: ok"
    kubectl -n "$NAMESPACE" get "mqttbroker/$cluster" \
        -o 'jsonpath={.status.conditions[?(@.type=="Rebalancing")].message}{"\n"}' || true

    say "rolling restart of $cluster (a pod annotation changed)"
    kubectl -n "$NAMESPACE" patch "mqttbroker/$cluster" --type merge \
        -p "{\"spec\":{\"annotations\":{\"e2e.kubemqtt.io/restarted-at\":\"$(date +%s)\"}}}"
    sleep 5
    kubectl -n "$NAMESPACE" rollout status "statefulset/$cluster" --timeout "${TIMEOUT}s"
    kubectl -n "$NAMESPACE" wait --for=condition=Ready "mqttbroker/$cluster" --timeout "${TIMEOUT}s"

    kubectl -n "$NAMESPACE" exec "$LOAD_POD" -- touch /tmp/stop
    kubectl -n "$NAMESPACE" wait --for=jsonpath='{.status.phase}'=Succeeded "pod/$LOAD_POD" --timeout 120s
    local result
    result="$(load_result)"
    say "$result"
    case "$result" in
        *"RESULT acked=0 "*) fail "the publisher got no acknowledgement" ;;
        *" lost=0"*) say "no acknowledged message lost through the scale-up and the rolling restart: ok" ;;
        *) fail "acknowledged messages lost: $result" ;;
    esac
    kubectl -n "$NAMESPACE" delete "pod/$LOAD_POD" "mqttuser/$CLUSTER_USER" "mqttbroker/$cluster" --wait --timeout "${TIMEOUT}s"
    # Its CA Secrets outlive it, as every broker's do, and so do the
    # volumes of its NATS (persistentVolumeClaimRetentionPolicy Retain).
    local left
    left="$(kubectl -n "$NAMESPACE" get secrets,persistentvolumeclaims -l "$MANAGED_BY" -o name |
        grep -F -- "$cluster-" || true)"
    if [ -n "$left" ]; then
        # shellcheck disable=SC2086 # one name per word
        kubectl -n "$NAMESPACE" delete $left --wait --timeout "${TIMEOUT}s"
    fi
}

main() {
    create_cluster
    check_cluster
    need helm mosquitto_pub mosquitto_sub base64 timeout
    [ -f "$USER_FILE" ] || fail "$USER_FILE does not exist"

    build_and_load_images
    install_chart

    BROKER="$(name_in "$BROKER_FILE")"
    USER_NAME="$(name_in "$USER_FILE")"
    say "applying MqttBroker $BROKER, MqttUser $USER_NAME and MqttUser $LISTENER in $NAMESPACE"
    kubectl -n "$NAMESPACE" apply -f "$BROKER_FILE" -f "$USER_FILE"
    apply_listener
    kubectl -n "$NAMESPACE" wait --for=condition=Ready "mqttbroker/$BROKER" "mqttuser/$USER_NAME" \
        "mqttuser/$LISTENER" --timeout "${TIMEOUT}s"
    kubectl -n "$NAMESPACE" get "mqttbroker/$BROKER" "mqttuser/$USER_NAME" "mqttuser/$LISTENER"
    kubectl -n "$NAMESPACE" get "service/$BROKER" -o wide

    # Every key a user's Secret promises (external-host only once the load
    # balancer has an address: never, on kind).
    local username key keys
    # shellcheck disable=SC2016 # a Go template, not shell
    keys="$(kubectl -n "$NAMESPACE" get secret "$USER_NAME-mqtt-credentials" \
        -o go-template='{{range $key, $value := .data}}{{$key}}{{"\n"}}{{end}}')"
    for key in username password ca.crt host port tls-port uri; do
        grep -qx "$key" <<<"$keys" || fail "Secret $USER_NAME-mqtt-credentials has no '$key'"
    done
    if [ -n "$(kubectl -n "$NAMESPACE" get "service/$BROKER-external" --ignore-not-found \
        -o jsonpath='{.status.loadBalancer.ingress}')" ]; then
        wait_until 120 "the Secret has external-host" external_host_known
    else
        say "note: no load balancer address (service/$BROKER-external), so the Secret has no external-host"
    fi
    username="$(secret_key "$USER_NAME" username)"
    OLD_PASSWORD="$(secret_key "$USER_NAME" password)"
    HOST="$(secret_key "$USER_NAME" host)"
    TLS_PORT="$(secret_key "$USER_NAME" tls-port)"
    secret_key "$USER_NAME" ca.crt >"$WORK/ca.crt"
    LISTENER_USERNAME="$(secret_key "$LISTENER" username)"
    LISTENER_PASSWORD="$(secret_key "$LISTENER" password)"
    TOPIC="${TOPIC:-devices/$username/e2e}"
    say "user $username, TLS port $TLS_PORT, host $HOST, topic $TOPIC"

    verify_server_certificate
    # The user's credentials reach the broker through a mounted Secret.
    wait_until 150 "$username can publish and subscribe over TLS" login_works "$username" "$OLD_PASSWORD"
    say "publish/subscribe over TLS with the Secret's credentials: ok"
    login_refused "$username" "wrong-$OLD_PASSWORD" || fail "a wrong password was not refused"

    say "rotating $USER_NAME's password"
    local rotated_at=$SECONDS
    kubectl -n "$NAMESPACE" annotate "mqttuser/$USER_NAME" "kubemqtt.io/rotate=$(date +%s)" --overwrite
    wait_until 120 "the Secret holds a new password" password_changed
    local new_password
    new_password="$(secret_key "$USER_NAME" password)"
    wait_until 150 "the new password works" login_works "$username" "$new_password"
    local elapsed=$((SECONDS - rotated_at))
    if [ "$elapsed" -ge $((GRACE_SECONDS - 5)) ]; then
        fail "the new password reached the broker ${elapsed}s after the rotation, too late to check" \
            "the ${GRACE_SECONDS}s grace window (raise rotation.graceMinutes in $USER_FILE and E2E_GRACE_SECONDS)"
    fi
    login_works "$username" "$OLD_PASSWORD" ||
        fail "the old password stopped working ${elapsed}s after the rotation, inside the ${GRACE_SECONDS}s grace window"
    say "both passwords work ${elapsed}s after the rotation: ok"

    local left=$((GRACE_SECONDS - (SECONDS - rotated_at)))
    if [ "$left" -gt 0 ]; then
        say "waiting ${left}s for the grace window to end"
        sleep "$left"
    fi
    wait_until 150 "the old password is refused after the grace window" \
        login_refused "$username" "$OLD_PASSWORD"
    login_works "$username" "$new_password" || fail "the new password stopped working"
    say "after the grace window only the new password works: ok"
    # Clear the retained test message.
    local options
    mapfile -t options < <(mqtt_options)
    timeout 20 mosquitto_pub "${options[@]}" -u "$username" -P "$new_password" -r -n >/dev/null 2>&1 || true
    stop_port_forward

    cluster_scenario

    say "deleting the user, the broker and the release"
    kubectl -n "$NAMESPACE" delete "mqttuser/$LISTENER" --wait --timeout "${TIMEOUT}s"
    kubectl -n "$NAMESPACE" delete -f "$USER_FILE" -f "$BROKER_FILE" --wait --timeout "${TIMEOUT}s"
    # The CAs devices trust outlive the broker (spec.tls.ca.deleteWithBroker
    # is false); deleting them is the documented way to let them go.
    wait_until "$TIMEOUT" "only the broker's CA Secrets are left" only_ca_secrets_left
    kubectl -n "$NAMESPACE" delete secret "$BROKER-ca" "$BROKER-clients-ca" --wait --timeout "${TIMEOUT}s"
    wait_until "$TIMEOUT" "no object labelled $MANAGED_BY is left" nothing_managed_left
    helm uninstall "$RELEASE" --namespace "$OPERATOR_NAMESPACE" --wait --timeout "${TIMEOUT}s"
    if [ "$INSTALLED_CRDS" = "1" ]; then
        kubectl delete -f "$CHART/crds/" --wait --timeout "${TIMEOUT}s"
        [ -z "$(kubemqtt_crds_left)" ] || fail "CRDs left: $(kubemqtt_crds_left)"
    fi
    local left_over
    left_over="$(release_objects_left)"
    [ -z "$left_over" ] || fail "objects of the release left: $left_over"
    local namespace
    for namespace in "${CREATED_NAMESPACES[@]}"; do
        kubectl delete namespace "$namespace" --wait --timeout "${TIMEOUT}s"
    done
    FINISHED=1
    say "PASSED"
}

main "$@"
