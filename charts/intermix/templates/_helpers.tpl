{{/* Names, labels and the settings every workload shares. */}}

{{- define "intermix.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-<chart>, or just <release> when it already contains the chart name. */}}
{{- define "intermix.fullname" -}}
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

{{/* Name of one component's resources; component names are short, so 52 leaves room for them. */}}
{{- define "intermix.componentName" -}}
{{- printf "%s-%s" (include "intermix.fullname" .root | trunc 52 | trimSuffix "-") .component }}
{{- end }}

{{- define "intermix.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "intermix.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: intermix
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "intermix.selectorLabels" -}}
app.kubernetes.io/name: {{ include "intermix.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component: call with (dict "root" $ "component" "mlflow"). */}}
{{- define "intermix.componentLabels" -}}
{{ include "intermix.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Pod template metadata of one component: its labels plus podLabels, and podAnnotations (call like componentLabels). */}}
{{- define "intermix.podMetadata" -}}
labels:
  {{- include "intermix.componentLabels" . | nindent 2 }}
  {{- with .root.Values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with .root.Values.podAnnotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "intermix.componentSelectorLabels" -}}
{{ include "intermix.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "intermix.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "intermix.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Pod-level security: never root; uid/gid/fsGroup from the component's values (null omits one, e.g. on OpenShift). */}}
{{- define "intermix.podSecurityContext" -}}
runAsNonRoot: true
{{- with .runAsUser }}
runAsUser: {{ . }}
{{- end }}
{{- with .runAsGroup }}
runAsGroup: {{ . }}
{{- end }}
{{- with .fsGroup }}
fsGroup: {{ . }}
fsGroupChangePolicy: OnRootMismatch
{{- end }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container-level security, the same for every container: writable paths come from emptyDir/PVC mounts only. */}}
{{- define "intermix.containerSecurityContext" -}}
runAsNonRoot: true
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop:
    - ALL
{{- end }}

{{/* Settings shared by every pod spec: call with the root context. */}}
{{- define "intermix.podCommon" -}}
serviceAccountName: {{ include "intermix.serviceAccountName" . }}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Node placement of one component: call with its values block. */}}
{{- define "intermix.placement" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "intermix.image" -}}
{{- printf "%s:%s" .repository .tag }}
{{- end }}

{{/* ---- S3 ---- */}}

{{- define "intermix.s3.secretName" -}}
{{- if .Values.s3.existingSecret }}
{{- .Values.s3.existingSecret }}
{{- else }}
{{- include "intermix.componentName" (dict "root" . "component" "s3") }}
{{- end }}
{{- end }}

{{/* In-cluster: the SeaweedFS Service; otherwise the configured endpoint (empty for AWS S3). */}}
{{- define "intermix.s3.endpoint" -}}
{{- if .Values.s3.enabled }}
{{- printf "http://%s.%s.svc.cluster.local:8333" (include "intermix.componentName" (dict "root" . "component" "s3")) .Release.Namespace }}
{{- else }}
{{- .Values.s3.endpoint }}
{{- end }}
{{- end }}

{{/* Environment every S3 client container gets: credentials from the Secret, endpoint and region. */}}
{{- define "intermix.s3.env" -}}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "intermix.s3.secretName" . }}
      key: AWS_ACCESS_KEY_ID
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "intermix.s3.secretName" . }}
      key: AWS_SECRET_ACCESS_KEY
- name: AWS_DEFAULT_REGION
  value: {{ .Values.s3.region | quote }}
{{- with (include "intermix.s3.endpoint" .) }}
- name: MLFLOW_S3_ENDPOINT_URL
  value: {{ . | quote }}
- name: AWS_ENDPOINT_URL_S3
  value: {{ . | quote }}
{{- end }}
{{- end }}

{{/* ---- Database ---- */}}

{{/* The values block of whichever PostgreSQL is in use. */}}
{{- define "intermix.db.values" -}}
{{- if .Values.postgresql.enabled }}
{{- toYaml .Values.postgresql }}
{{- else }}
{{- toYaml .Values.externalDatabase }}
{{- end }}
{{- end }}

{{- define "intermix.db.secretName" -}}
{{- $db := include "intermix.db.values" . | fromYaml }}
{{- if $db.existingSecret }}
{{- $db.existingSecret }}
{{- else }}
{{- include "intermix.componentName" (dict "root" . "component" "postgresql") }}
{{- end }}
{{- end }}

{{- define "intermix.db.host" -}}
{{- if .Values.postgresql.enabled }}
{{- include "intermix.componentName" (dict "root" . "component" "postgresql") }}
{{- else }}
{{- required "externalDatabase.host is required when postgresql.enabled is false" .Values.externalDatabase.host }}
{{- end }}
{{- end }}

{{- define "intermix.db.port" -}}
{{- if .Values.postgresql.enabled }}5432{{ else }}{{ .Values.externalDatabase.port }}{{ end }}
{{- end }}

{{/* ---- MLflow ---- */}}

{{- define "intermix.mlflow.url" -}}
{{- printf "http://%s.%s.svc.cluster.local:%v" (include "intermix.componentName" (dict "root" . "component" "mlflow")) .Release.Namespace .Values.mlflow.service.port }}
{{- end }}

{{/* ---- NetworkPolicy ---- */}}

{{/* Who may reach MLflow and S3: pods of this namespace and of networkPolicy.allowedNamespaces. */}}
{{- define "intermix.networkPolicy.clients" -}}
- podSelector: {}
{{- range .Values.networkPolicy.allowedNamespaces }}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ . | quote }}
{{- end }}
{{- end }}
