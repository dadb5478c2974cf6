{{/* name: the chart's name, or nameOverride. */}}
{{- define "kss.name" -}}
{{- .Values.nameOverride | default .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
fullname: fullnameOverride, else the release's name, or the release's name
with the chart's when it does not contain it, at most 63 characters (Helm's
convention).
*/}}
{{- define "kss.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "kss.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* selectorLabels select this release's pods; they never change. */}}
{{- define "kss.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kss.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* labels go on every object. */}}
{{- define "kss.labels" -}}
{{ include "kss.selectorLabels" . }}
app.kubernetes.io/part-of: kube-secret-sync
app.kubernetes.io/component: {{ include "kss.component" . }}
app.kubernetes.io/version: {{ include "kss.tag" . | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* component is leader or follower, as the kustomize overlays label it. */}}
{{- define "kss.component" -}}
{{- if eq .Values.role "follower" -}}follower{{- else -}}leader{{- end -}}
{{- end -}}

{{/* leader: LEADER=1 (leader and failover-leader). */}}
{{- define "kss.leader" -}}
{{- if eq .Values.role "follower" -}}0{{- else -}}1{{- end -}}
{{- end -}}

{{/* writes: the daemon writes Secrets (a follower, or a failover leader on standby). */}}
{{- define "kss.writes" -}}
{{- if ne .Values.role "leader" -}}true{{- end -}}
{{- end -}}

{{- define "kss.tag" -}}
{{- .Values.image.tag | default .Chart.AppVersion -}}
{{- end -}}

{{- define "kss.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (include "kss.tag" .) -}}
{{- end -}}
{{- end -}}

{{- define "kss.secretName" -}}
{{- .Values.secret.name | default (include "kss.fullname" .) -}}
{{- end -}}

{{- define "kss.caSecretName" -}}
{{- .Values.databaseCA.secretName | default (printf "%s-db-ca" (include "kss.fullname" .)) -}}
{{- end -}}

{{/* rbacName is the name of the role's RBAC objects: fullname-leader or fullname-follower. */}}
{{- define "kss.rbacName" -}}
{{- printf "%s-%s" (include "kss.fullname" .) (ternary "follower" "leader" (eq (include "kss.writes" .) "true")) -}}
{{- end -}}

{{/* subject is the ServiceAccount as an RBAC subject. */}}
{{- define "kss.subject" -}}
- kind: ServiceAccount
  name: {{ include "kss.fullname" . }}
  namespace: {{ .Release.Namespace }}
{{- end -}}

{{/* eventsRule lets the daemon write Events. */}}
{{- define "kss.eventsRule" -}}
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}
