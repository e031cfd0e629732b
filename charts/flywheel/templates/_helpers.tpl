{{/* The chart name, truncated to fit a label value. */}}
{{- define "flywheel.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name: the release name when it contains the chart name, else `<release>-<chart>`.
Object names append `-operator` or `-collector`, so it stays under 50 characters.
*/}}
{{- define "flywheel.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* `<chart>-<version>` for the helm.sh/chart label. */}}
{{- define "flywheel.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "flywheel.labels" -}}
helm.sh/chart: {{ include "flywheel.chart" . }}
app.kubernetes.io/name: {{ include "flywheel.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: flywheel
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: call with (dict "ctx" $ "component" "operator"). */}}
{{- define "flywheel.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flywheel.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Labels of one component's objects: call with (dict "ctx" $ "component" "operator"). */}}
{{- define "flywheel.componentLabels" -}}
{{ include "flywheel.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "flywheel.operator.fullname" -}}
{{ include "flywheel.fullname" . }}-operator
{{- end }}

{{- define "flywheel.collector.fullname" -}}
{{ include "flywheel.fullname" . }}-collector
{{- end }}

{{- define "flywheel.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "flywheel.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "flywheel.collector.serviceAccountName" -}}
{{- if .Values.collector.serviceAccount.create }}
{{- default (include "flywheel.collector.fullname" .) .Values.collector.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.collector.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image of every component. */}}
{{- define "flywheel.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The Secret with the collector's tokens (key `token`). */}}
{{- define "flywheel.collector.tokenSecretName" -}}
{{- if .Values.collector.auth.existingSecret }}
{{- .Values.collector.auth.existingSecret }}
{{- else }}
{{- include "flywheel.collector.fullname" . }}-token
{{- end }}
{{- end }}

{{/* Whether the collector runs on PostgreSQL. */}}
{{- define "flywheel.collector.postgres" -}}
{{- if or .Values.collector.postgres.url .Values.collector.postgres.existingSecret }}true{{ end }}
{{- end }}

{{/* The Secret with the PostgreSQL URL. */}}
{{- define "flywheel.collector.databaseSecretName" -}}
{{- if .Values.collector.postgres.existingSecret }}
{{- .Values.collector.postgres.existingSecret }}
{{- else }}
{{- include "flywheel.collector.fullname" . }}-database
{{- end }}
{{- end }}

{{/* The collector's URL inside the cluster. */}}
{{- define "flywheel.collector.url" -}}
http://{{ include "flywheel.collector.fullname" . }}.{{ .Release.Namespace }}.svc:{{ .Values.collector.port }}
{{- end }}

{{/* The pod security context of every pod (Pod Security Standards: restricted). */}}
{{- define "flywheel.podSecurityContext" -}}
runAsNonRoot: true
{{- with .Values.securityContext.runAsUser }}
runAsUser: {{ . }}
{{- end }}
{{- with .Values.securityContext.runAsGroup }}
runAsGroup: {{ . }}
{{- end }}
{{- with .Values.securityContext.fsGroup }}
fsGroup: {{ . }}
fsGroupChangePolicy: OnRootMismatch
{{- end }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The security context of every container (Pod Security Standards: restricted). */}}
{{- define "flywheel.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Values that cannot work together. */}}
{{- define "flywheel.validate" -}}
{{- if and (gt (int .Values.collector.replicaCount) 1) (not (include "flywheel.collector.postgres" .)) }}
{{- fail "collector.replicaCount > 1 needs PostgreSQL: set collector.postgres.url or collector.postgres.existingSecret (SQLite serves one replica)" }}
{{- end }}
{{- if and .Values.collector.persistence.existingClaim (not (include "flywheel.collector.postgres" .)) }}
{{- fail "collector.persistence.existingClaim is for the PostgreSQL Deployment; on SQLite the StatefulSet makes its own claim" }}
{{- end }}
{{- $le := .Values.operator.leaderElection }}
{{- if not (and (lt (int $le.retryPeriod) (int $le.renewDeadline)) (lt (int $le.renewDeadline) (int $le.leaseDuration))) }}
{{- fail "operator.leaderElection needs retryPeriod < renewDeadline < leaseDuration" }}
{{- end }}
{{- end }}

{{/*
The operator's least-privilege rules (the same as config/rbac/cluster_role.yaml): in a ClusterRole
for a cluster-wide install, in a Role per watched namespace for a namespace-scoped one.
*/}}
{{- define "flywheel.operator.rules" -}}
rules:
  - apiGroups: ["flywheel.dev"]
    resources: ["modeldeployments", "feedbackpolicies"]
    verbs: ["get", "list", "watch"]
  - apiGroups: ["flywheel.dev"]
    resources: ["retrainjobs"]
    verbs: ["get", "list", "watch", "create"]
  - apiGroups: ["flywheel.dev"]
    resources: ["modeldeployments/status", "feedbackpolicies/status", "retrainjobs/status"]
    verbs: ["get", "patch", "update"]
  - apiGroups: ["flywheel.dev"]
    resources: ["modeldeployments/finalizers", "feedbackpolicies/finalizers", "retrainjobs/finalizers"]
    verbs: ["update"]
  # Owned workloads, applied with server-side apply (patch).
  - apiGroups: ["apps"]
    resources: ["deployments"]
    verbs: ["get", "list", "watch", "create", "patch", "delete"]
  # The wanted adapters of an Adapter-mode ModelDeployment, mounted into its agents.
  - apiGroups: [""]
    resources: ["configmaps"]
    verbs: ["get", "list", "watch", "create", "patch", "delete"]
  - apiGroups: [""]
    resources: ["services"]
    verbs: ["get", "list", "watch", "create", "patch", "delete"]
  # Pods: the autoscaler scrapes the agents; a finished Job's termination message is read;
  # patch removes the attempt-result finalizer from a trainer pod once its result is recorded.
  - apiGroups: [""]
    resources: ["pods"]
    verbs: ["get", "list", "watch", "patch"]
  # A model or dataset URI of the form pvc:// must name an existing claim.
  - apiGroups: [""]
    resources: ["persistentvolumeclaims"]
    verbs: ["get", "list", "watch"]
  - apiGroups: ["policy"]
    resources: ["poddisruptionbudgets"]
    verbs: ["get", "list", "watch", "create", "patch", "delete"]
  - apiGroups: ["batch"]
    resources: ["jobs"]
    verbs: ["get", "list", "watch", "create", "patch", "delete"]
  - apiGroups: [""]
    resources: ["events"]
    verbs: ["create", "patch"]
  - apiGroups: ["events.k8s.io"]
    resources: ["events"]
    verbs: ["create", "patch"]
  # Canary traffic split on a user-owned HTTPRoute (Gateway API).
  - apiGroups: ["gateway.networking.k8s.io"]
    resources: ["httproutes"]
    verbs: ["get", "list", "watch", "patch"]
{{- end }}
