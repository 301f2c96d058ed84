#!/usr/bin/env bash
# The chart checks behind `make helm-lint` (which installs the tools and sets the variables):
# for the default values and for every value set in $CHART/ci/*-values.yaml,
#   helm lint --strict, then helm template, then kubernetes-validate --strict on every manifest.
# kubernetes-validate knows only Kubernetes' own kinds: the ServiceMonitor and the PrometheusRule
# (Prometheus Operator CRDs) are left out here and checked in tests/deploy/test_helm_chart.py
# (field by field; the rules also by `promtool check rules` and `promtool test rules`); any other
# kind without a schema fails.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${HELM:?}" "${KUBERNETES_VALIDATE:?}" "${KUBERNETES_VERSION:?}" "${CHART:?}"

OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

value_files=("" "$CHART"/ci/*-values.yaml)
for values in "${value_files[@]}"; do
  if [[ -z "$values" ]]; then
    name=default
    args=()
  else
    name=$(basename "$values" -values.yaml)
    args=(--values "$values")
  fi
  echo "== $name"
  "$HELM" lint --strict --quiet --kube-version "$KUBERNETES_VERSION" "${args[@]}" "$CHART"
  "$HELM" template ci "$CHART" --namespace token-broker --kube-version "$KUBERNETES_VERSION" \
    "${args[@]}" --output-dir "$OUT/$name" >/dev/null

  mapfile -t manifests < <(find "$OUT/$name" -name '*.yaml' ! -name servicemonitor.yaml \
    ! -name prometheusrule.yaml | sort)
  if ! report=$("$KUBERNETES_VALIDATE" -k "$KUBERNETES_VERSION" --strict "${manifests[@]}" 2>&1); then
    echo "$report"
    exit 1
  fi
  if grep -q "Couldn't find schema" <<<"$report"; then
    echo "$report"
    echo "deploy-checks: $name renders a kind kubernetes-validate cannot check" >&2
    exit 1
  fi
  passed=$(grep -c "passed for resource" <<<"$report" || true)
  echo "   helm lint ok; $passed manifests valid against Kubernetes $KUBERNETES_VERSION"
done
