{{/* The chart name, or nameOverride. */}}
{{- define "kubemqtt-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects: fullnameOverride, else the release
name when it already holds the chart name, else "<release>-<chart>".
*/}}
{{- define "kubemqtt-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kubemqtt-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object of the release. */}}
{{- define "kubemqtt-operator.labels" -}}
helm.sh/chart: {{ include "kubemqtt-operator.chart" . }}
{{ include "kubemqtt-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: kubemqtt
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The labels that select the operator's pods. */}}
{{- define "kubemqtt-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubemqtt-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kubemqtt-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubemqtt-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kubemqtt-operator.leaseName" -}}
{{- default (include "kubemqtt-operator.fullname" .) .Values.operator.leaseName }}
{{- end }}

{{- define "kubemqtt-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
What the operator does in each namespace it watches, verb by verb (see
operator/src/controller/): it watches MqttBrokers and MqttUsers and writes
their status (server-side apply of the status subresource); it reads
(observe.rs), watches (run.rs) and server-side applies (apply.rs: `patch`,
and `create` for an apply that creates) the objects it runs a broker with;
it posts events.k8s.io Events (events.rs: kube's Recorder creates them and
patches a series). It lists a broker's pods (to push credentials to each
and know which have them), deletes a StatefulSet without its pods and
grows its PersistentVolumeClaims when `spec.persistence` changes
(broker.rs), and applies cert-manager Certificates with
`spec.tls.certManager`. Its owner references do not set
blockOwnerDeletion, so no `update` on the owners' finalizers is needed. README.md and
operator/tests/chart.rs hold the same list: change all three together.
*/}}
{{- define "kubemqtt-operator.rules" -}}
- apiGroups: [kubemqtt.io]
  resources: [mqttbrokers, mqttusers, mqttbridges, mqttdevicefleets]
  verbs: [get, list, watch]
- apiGroups: [kubemqtt.io]
  resources: [mqttbrokers/status, mqttusers/status, mqttbridges/status, mqttdevicefleets/status]
  verbs: [patch]
- apiGroups: [kubemqtt.io]
  resources: [mqttusers]
  verbs: [create, patch]
- apiGroups: [kubemqtt.io]
  resources: [mqttdevicefleets]
  verbs: [patch]
- apiGroups: [kubemqtt.io]
  resources: [mqttdevicefleets/finalizers]
  verbs: [update]
- apiGroups: [""]
  resources: [configmaps, secrets, services]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [apps]
  resources: [statefulsets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [list, patch]
- apiGroups: [cert-manager.io]
  resources: [certificates]
  verbs: [get, create, patch]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, create, patch, delete]
- apiGroups: [keda.sh]
  resources: [scaledobjects]
  verbs: [get, create, patch, delete]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end }}

{{/*
The leader election, in the release namespace only (kube-lease-manager:
it creates the Lease, reads it and patches it to take, renew and release
it). `create` cannot be limited to a name; the rest is limited to the one
Lease.
*/}}
{{- define "kubemqtt-operator.leaseRules" -}}
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [create]
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  resourceNames: [{{ include "kubemqtt-operator.leaseName" . | quote }}]
  verbs: [get, patch]
{{- end }}
