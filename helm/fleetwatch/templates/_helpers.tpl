{{/* Names, labels, and the pod template every fleetwatch role shares. */}}

{{- define "fleetwatch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fleetwatch.fullname" -}}
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

{{- define "fleetwatch.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "fleetwatch.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fleetwatch
{{- end }}

{{- define "fleetwatch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fleetwatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one role's objects; call with (dict "root" $ "role" "worker"). */}}
{{- define "fleetwatch.roleLabels" -}}
{{ include "fleetwatch.labels" .root }}
app.kubernetes.io/component: {{ .role }}
{{- end }}

{{- define "fleetwatch.roleSelectorLabels" -}}
{{ include "fleetwatch.selectorLabels" .root }}
app.kubernetes.io/component: {{ .role }}
{{- end }}

{{- define "fleetwatch.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fleetwatch.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "fleetwatch.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The chart's own Secret, holding whatever credentials are not taken from an existing Secret. */}}
{{- define "fleetwatch.secretName" -}}
{{- include "fleetwatch.fullname" . }}
{{- end }}

{{- define "fleetwatch.registrySecretName" -}}
{{- default (include "fleetwatch.secretName" .) .Values.registry.existingSecret }}
{{- end }}

{{- define "fleetwatch.redisSecretName" -}}
{{- default (include "fleetwatch.secretName" .) .Values.redis.existingSecret }}
{{- end }}

{{- define "fleetwatch.redisHasPassword" -}}
{{- if or .Values.redis.password .Values.redis.existingSecret }}true{{ end }}
{{- end }}

{{- define "fleetwatch.kafkaSaslSecretName" -}}
{{- default (include "fleetwatch.secretName" .) .Values.kafka.sasl.existingSecret }}
{{- end }}

{{- define "fleetwatch.kafkaTlsSecretName" -}}
{{- default (printf "%s-kafka-tls" (include "fleetwatch.fullname" .)) .Values.kafka.tls.existingSecret }}
{{- end }}

{{- define "fleetwatch.kafkaTlsDir" -}}/etc/fleetwatch/kafka-tls{{- end }}

{{/* A key the chart generates once and then keeps: the given value, else the one the chart's Secret holds
from an earlier install (Helm `lookup`; a new key would invalidate what the old one signed), else 48
random characters. Call with (dict "root" $ "given" .Values.registry.key "secretKey" "registry-key"). */}}
{{- define "fleetwatch.keptKey" -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace (include "fleetwatch.secretName" .root) }}
{{- .given | default ((dig "data" .secretKey "" ($existing | default dict)) | b64dec) | default (randAlphaNum 48) }}
{{- end }}

{{- define "fleetwatch.consoleSigningKeySecretName" -}}
{{- default (include "fleetwatch.secretName" .) .Values.console.signingKey.existingSecret }}
{{- end }}

{{- define "fleetwatch.consoleStoreSecretName" -}}
{{- default (include "fleetwatch.secretName" .) .Values.console.store.postgresql.existingSecret }}
{{- end }}

{{- define "fleetwatch.consoleTlsDir" -}}/etc/fleetwatch/console-tls{{- end }}

{{- define "fleetwatch.consoleStoreDir" -}}/var/lib/fleetwatch/console{{- end }}

{{/* librdkafka properties that are not secret: security.protocol and TLS file paths from kafka.sasl and
kafka.tls, then kafka.properties. The SASL username and password come from the Secret as environment. */}}
{{- define "fleetwatch.kafkaProperties" -}}
{{- $kafka := .Values.kafka }}
{{- $props := dict }}
{{- if and $kafka.sasl.enabled $kafka.tls.enabled }}
{{- $_ := set $props "security.protocol" "SASL_SSL" }}
{{- else if $kafka.sasl.enabled }}
{{- $_ := set $props "security.protocol" "SASL_PLAINTEXT" }}
{{- else if $kafka.tls.enabled }}
{{- $_ := set $props "security.protocol" "SSL" }}
{{- end }}
{{- if $kafka.sasl.enabled }}
{{- $_ := set $props "sasl.mechanism" $kafka.sasl.mechanism }}
{{- end }}
{{- if $kafka.tls.enabled }}
{{- $_ := set $props "ssl.ca.location" (printf "%s/ca.crt" (include "fleetwatch.kafkaTlsDir" .)) }}
{{- if $kafka.tls.clientAuth }}
{{- $_ := set $props "ssl.certificate.location" (printf "%s/tls.crt" (include "fleetwatch.kafkaTlsDir" .)) }}
{{- $_ := set $props "ssl.key.location" (printf "%s/tls.key" (include "fleetwatch.kafkaTlsDir" .)) }}
{{- end }}
{{- end }}
{{- toYaml (mustMergeOverwrite $props $kafka.properties) }}
{{- end }}

{{/* The TOML file of the ConfigMap: `config`, plus the Kafka connection, the workers' consumer group
(the one KEDA watches, so the two cannot disagree) and, with console.enabled, the console settings that
its pod spec decides (where it listens, its certificate files, its SQLite file) over `config.console`.
A PostgreSQL store URL holds a password: it comes from a Secret as FLEETWATCH_CONSOLE__STORE_URL instead. */}}
{{- define "fleetwatch.configToml" -}}
{{- $derived := dict
  "kafka_bootstrap" .Values.kafka.bootstrapServers
  "kafka_properties" (include "fleetwatch.kafkaProperties" . | fromYaml)
  "worker" (dict "group_id" .Values.kafka.consumerGroup) }}
{{- $console := .Values.console }}
{{- if $console.enabled }}
{{- $settings := dict "host" "0.0.0.0" "port" (int $console.port) "tls" $console.tls.enabled }}
{{- if and $console.tls.enabled $console.tls.existingSecret }}
{{- $_ := set $settings "tls_cert_file" (printf "%s/tls.crt" (include "fleetwatch.consoleTlsDir" .)) }}
{{- $_ := set $settings "tls_key_file" (printf "%s/tls.key" (include "fleetwatch.consoleTlsDir" .)) }}
{{- end }}
{{- if not $console.store.postgresql.enabled }}
{{- $_ := set $settings "store_url" (printf "sqlite:///%s/console.db" (include "fleetwatch.consoleStoreDir" .)) }}
{{- end }}
{{- $_ := set $derived "console" $settings }}
{{- end }}
{{- toToml (mustMergeOverwrite (deepCopy .Values.config) $derived) }}
{{- end }}

{{/* Autoscaler bounds: more consumers than partitions would sit idle, so a maximum above the partition
count is a mistake, not a choice. Call with (dict "root" $ "name" "worker.keda" "max" N). */}}
{{- define "fleetwatch.checkMaxReplicas" -}}
{{- if gt (int .max) (int .root.Values.kafka.inputPartitions) }}
{{- fail (printf "%s.maxReplicas (%d) exceeds kafka.inputPartitions (%d): a consumer group cannot use more workers than partitions" .name (int .max) (int .root.Values.kafka.inputPartitions)) }}
{{- end }}
{{- end }}

{{/*
The pod template of one role. Call with (dict "root" $ "role" "worker" "spec" .Values.worker "args" (list "worker")).
The args are the `fleetwatch` subcommand and its flags (the image's entrypoint is `fleetwatch`).
Optional: "port" (dict "name" "containerPort" "scheme"; default the metrics port over http), where the
process serves /metrics and its probes; "env", "volumeMounts" and "volumes", lists added to the common ones.
*/}}
{{- define "fleetwatch.podTemplate" -}}
{{- $root := .root }}
{{- $values := $root.Values -}}
{{- $port := .port | default (dict "name" "metrics" "containerPort" $values.metricsPort "scheme" "http") -}}
metadata:
  labels:
    {{- include "fleetwatch.roleSelectorLabels" . | nindent 4 }}
    {{- with $values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    # Roll the pods when their configuration changes.
    checksum/config: {{ include "fleetwatch.configToml" $root | sha256sum }}
    {{- if $values.metrics.podAnnotations }}
    prometheus.io/scrape: "true"
    prometheus.io/port: {{ $port.containerPort | quote }}
    prometheus.io/path: /metrics
    {{- if ne $port.scheme "http" }}
    prometheus.io/scheme: {{ $port.scheme }}
    {{- end }}
    {{- end }}
    {{- with $values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "fleetwatch.serviceAccountName" $root }}
  automountServiceAccountToken: false
  {{- with $values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  terminationGracePeriodSeconds: {{ .spec.terminationGracePeriodSeconds }}
  securityContext:
    {{- toYaml $values.podSecurityContext | nindent 4 }}
  containers:
    - name: {{ .role }}
      image: {{ include "fleetwatch.image" $root }}
      imagePullPolicy: {{ $values.image.pullPolicy }}
      args:
        {{- toYaml .args | nindent 8 }}
      ports:
        - name: {{ $port.name }}
          containerPort: {{ $port.containerPort }}
          protocol: TCP
      env:
        - name: FLEETWATCH_CONFIG
          value: /etc/fleetwatch/fleetwatch.toml
        {{- $redis := $values.redis }}
        {{- if include "fleetwatch.redisHasPassword" $root }}
        # Defined before the URL, which refers to it with $(...).
        - name: REDIS_PASSWORD
          valueFrom:
            secretKeyRef:
              name: {{ include "fleetwatch.redisSecretName" $root }}
              key: {{ $redis.existingSecretKey }}
        - name: FLEETWATCH_REDIS_URL
          value: {{ printf "%s://:$(REDIS_PASSWORD)@%s:%d/%d" (ternary "rediss" "redis" $redis.tls) $redis.host (int $redis.port) (int $redis.database) | quote }}
        {{- else }}
        - name: FLEETWATCH_REDIS_URL
          value: {{ printf "%s://%s:%d/%d" (ternary "rediss" "redis" $redis.tls) $redis.host (int $redis.port) (int $redis.database) | quote }}
        {{- end }}
        - name: FLEETWATCH_REGISTRY_KEY
          valueFrom:
            secretKeyRef:
              name: {{ include "fleetwatch.registrySecretName" $root }}
              key: {{ $values.registry.existingSecretKey }}
        {{- if $values.kafka.sasl.enabled }}
        # Nested settings keys (FLEETWATCH_KAFKA_PROPERTIES__<property>) merge into the ConfigMap's
        # kafka_properties, so the credentials never enter the ConfigMap.
        - name: FLEETWATCH_KAFKA_PROPERTIES__sasl.username
          valueFrom:
            secretKeyRef:
              name: {{ include "fleetwatch.kafkaSaslSecretName" $root }}
              key: {{ $values.kafka.sasl.usernameKey }}
        - name: FLEETWATCH_KAFKA_PROPERTIES__sasl.password
          valueFrom:
            secretKeyRef:
              name: {{ include "fleetwatch.kafkaSaslSecretName" $root }}
              key: {{ $values.kafka.sasl.passwordKey }}
        {{- end }}
        {{- with .env }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        {{- with $values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      livenessProbe:
        {{- toYaml .spec.livenessProbe | nindent 8 }}
      readinessProbe:
        {{- toYaml .spec.readinessProbe | nindent 8 }}
      resources:
        {{- toYaml .spec.resources | nindent 8 }}
      securityContext:
        {{- toYaml $values.securityContext | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: /etc/fleetwatch/fleetwatch.toml
          subPath: fleetwatch.toml
          readOnly: true
        - name: tmp
          mountPath: /tmp
        - name: data
          mountPath: /var/lib/fleetwatch
        {{- if $values.kafka.tls.enabled }}
        - name: kafka-tls
          mountPath: {{ include "fleetwatch.kafkaTlsDir" $root }}
          readOnly: true
        {{- end }}
        {{- with .volumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "fleetwatch.fullname" $root }}
    # The root filesystem is read-only: scratch space and the working directory are emptyDirs.
    - name: tmp
      emptyDir: {}
    - name: data
      emptyDir: {}
    {{- if $values.kafka.tls.enabled }}
    - name: kafka-tls
      secret:
        secretName: {{ include "fleetwatch.kafkaTlsSecretName" $root }}
        defaultMode: 0440
    {{- end }}
    {{- with .volumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
