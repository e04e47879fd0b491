{{/*
Labels of every object. The agents' pods also carry app.kubernetes.io/name=periscope-agent, the
relay's --k8s-agent-selector.
*/}}
{{- define "periscope.labels" -}}
app.kubernetes.io/part-of: periscope
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "periscope.agentSelector" -}}
app.kubernetes.io/name: periscope-agent
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "periscope.relaySelector" -}}
app.kubernetes.io/name: periscope-relay
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "periscope.clickhouseSelector" -}}
app.kubernetes.io/name: periscope-clickhouse
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The ClickHouse URL the relay uses: the given one, or the trial StatefulSet's. */}}
{{- define "periscope.clickhouseUrl" -}}
{{- if .Values.relay.clickhouse.url -}}
{{ .Values.relay.clickhouse.url }}
{{- else if .Values.clickhouse.enabled -}}
http://{{ .Release.Name }}-clickhouse.{{ .Release.Namespace }}.svc:8123
{{- end -}}
{{- end }}

{{/* The Secret with the ClickHouse password (key `password`), if any. */}}
{{- define "periscope.clickhouseSecret" -}}
{{- if .Values.relay.clickhouse.existingSecret -}}
{{ .Values.relay.clickhouse.existingSecret }}
{{- else if .Values.clickhouse.enabled -}}
{{ .Release.Name }}-clickhouse
{{- end -}}
{{- end }}

{{- define "periscope.uiTokenSecret" -}}
{{ .Values.relay.uiToken.existingSecret | default (printf "%s-ui-token" .Release.Name) }}
{{- end }}

{{/* A random secret value (base64), or the one already in the cluster (upgrades keep it). */}}
{{- define "periscope.keepOrRandom" -}}
{{- $old := lookup "v1" "Secret" .ctx.Release.Namespace .name -}}
{{- if and $old $old.data (index $old.data .key) -}}
{{ index $old.data .key }}
{{- else -}}
{{ randAlphaNum 40 | b64enc }}
{{- end -}}
{{- end }}
