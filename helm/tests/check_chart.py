#!/usr/bin/env python3
"""Checks the amdim Helm chart and the monitoring files in deploy/, offline.

What it does:
  1. `helm lint --strict` of helm/amdim (default values and
     deploy/values-gpu.yaml), through Helm 4's Go SDK (helm-python-sdk).
  2. Renders the chart for a set of cases (defaults, the GPU values, the
     existingSecret path, persistence and ServiceMonitor switches, gRPC TLS
     from an existing Secret and from cert-manager, …) and the cases that
     must fail (PDB over one worker, TLS without a certificate source,
     unknown values keys).
  3. Validates every rendered object with kubernetes-validate's strict
     schemas for two Kubernetes versions. ServiceMonitor and cert-manager's
     Certificate are CRDs those schemas do not cover: they are skipped
     there, said so, and checked instead, the ServiceMonitor's ports and
     selectors against the rendered Services, the Certificate against a
     strict JSON schema of the cert-manager.io/v1 fields and against the
     coordinator Service's DNS names.
  4. Asserts the chart's conventions: non-root pods, read-only root
     filesystems, no capabilities, RuntimeDefault seccomp, probes, resources,
     GPU limits in the GPU render, the process command lines, labels.
  5. Checks deploy/grafana/amdim-dashboard.json and deploy/prometheus.yml
     against the metric catalogue.
  6. check_extras.py: the Grafana dashboard ConfigMap, the PrometheusRule
     (promtool check rules and promtool test rules on synthetic series), the
     NetworkPolicies, the helm test Pod, the worker update strategy.

Needs: pip install helm-python-sdk kubernetes-validate (PyYAML comes with
the latter). Run from anywhere:

    python3 helm/tests/check_chart.py [-v]

Exit status 0 when every check passes, 1 when one fails (each failure is
listed), 2 when the tools are missing.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "amdim"
GPU_VALUES = ROOT / "deploy" / "values-gpu.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "amdim-dashboard.json"
PROMETHEUS = ROOT / "deploy" / "prometheus.yml"

# Kubernetes versions whose strict schemas every object must pass: the oldest
# still common in managed clusters, and the newest kubernetes-validate ships.
KUBE_VERSIONS = ["1.29.0", "latest"]
RELEASE = "amdim"
NAMESPACE = "amdim"
PDB_FAILURE = "pdb.enabled=true needs worker.replicas >= 2"
TLS_FAILURE = "tls.enabled=true needs a certificate for the coordinator"
TLS_DIR = "/etc/amdim/tls"
TLS_COORDINATOR_ARGS = ["--tls-cert-file", f"{TLS_DIR}/tls.crt", "--tls-key-file", f"{TLS_DIR}/tls.key"]
TLS_WORKER_ARGS = ["--tls-ca-file", f"{TLS_DIR}/ca.crt"]
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

# cert-manager.io/v1 Certificate, strictly: the fields of cert-manager's CRD
# (v1.x) a chart can set, with unknown fields refused as the API server's
# structural-schema pruning would drop them. kubernetes-validate has no CRDs.
CERT_USAGES = [
    "signing", "digital signature", "content commitment", "key encipherment", "key agreement",
    "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any",
    "server auth", "client auth", "code signing", "email protection", "s/mime", "ipsec end system",
    "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc",
]
_STRINGS = {"type": "array", "items": {"type": "string", "minLength": 1}}
CERTIFICATE_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "cert-manager.io/v1"},
        "kind": {"const": "Certificate"},
        "metadata": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name", "namespace"],
            "properties": {
                "name": {"type": "string", "pattern": DNS_SUBDOMAIN, "maxLength": 253},
                "namespace": {"type": "string", "minLength": 1},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["issuerRef", "secretName"],
            "anyOf": [{"required": ["dnsNames"]}, {"required": ["ipAddresses"]}, {"required": ["commonName"]},
                      {"required": ["uris"]}, {"required": ["emailAddresses"]}],
            "properties": {
                "secretName": {"type": "string", "pattern": DNS_SUBDOMAIN, "maxLength": 253},
                "secretTemplate": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                   "annotations": {"type": "object", "additionalProperties": {"type": "string"}}},
                },
                "commonName": {"type": "string", "maxLength": 64},
                "dnsNames": {**_STRINGS, "uniqueItems": True},
                "ipAddresses": {**_STRINGS, "uniqueItems": True},
                "uris": _STRINGS,
                "emailAddresses": _STRINGS,
                "duration": {"type": "string"},
                "renewBefore": {"type": "string"},
                "renewBeforePercentage": {"type": "integer"},
                "revisionHistoryLimit": {"type": "integer", "minimum": 1},
                "isCA": {"type": "boolean"},
                "usages": {"type": "array", "items": {"enum": CERT_USAGES}, "uniqueItems": True},
                "privateKey": {
                    "type": "object", "additionalProperties": False,
                    "properties": {
                        "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                        "encoding": {"enum": ["PKCS1", "PKCS8"]},
                        "rotationPolicy": {"enum": ["Never", "Always"]},
                        "size": {"type": "integer"},
                    },
                },
                "issuerRef": {
                    "type": "object", "additionalProperties": False, "required": ["name"],
                    "properties": {"name": {"type": "string", "minLength": 1}, "kind": {"type": "string", "minLength": 1},
                                   "group": {"type": "string", "minLength": 1}},
                },
            },
        },
    },
}

# The metric catalogue the processes export (docs/architecture.md §9).
WORKER_METRICS = {
    "amdim_train_samples_total", "amdim_train_steps_total", "amdim_train_step",
    "amdim_train_total_steps", "amdim_step_duration_seconds", "amdim_step_phase_seconds_total",
    "amdim_loss", "amdim_eval_accuracy_ratio", "amdim_allreduce_duration_seconds",
    "amdim_allreduce_bytes_total", "amdim_allgather_duration_seconds", "amdim_allgather_bytes_total",
    "amdim_dataloader_wait_seconds", "amdim_decode_errors_total", "amdim_checkpoint_duration_seconds",
    "amdim_checkpoint_bytes_total", "amdim_checkpoint_failures_total", "amdim_checkpoint_deferred_total",
    "amdim_checkpoint_last_step",
    "amdim_rank_step_lag_seconds",
}
# Exported by both processes (backend="none" on the coordinator); not a dashboard panel.
BUILD_INFO = "amdim_build_info"
COORDINATOR_METRICS = {
    "amdim_jobs", "amdim_workers", "amdim_job_restarts_total", "amdim_job_step",
    "amdim_job_total_steps", "amdim_checkpoints_committed_total", "amdim_job_workers", "amdim_job_generation",
}
HISTOGRAMS = {
    "amdim_step_duration_seconds", "amdim_allreduce_duration_seconds", "amdim_allgather_duration_seconds",
    "amdim_dataloader_wait_seconds", "amdim_checkpoint_duration_seconds",
}
LABEL_VALUES = {
    "phase": {"data_wait", "compute", "allgather", "bn_sync", "allreduce", "rank_sync", "checkpoint"},
    "term": {"nce_1t5", "nce_1t7", "nce_5t5", "reg", "total", "class_lin", "class_mlp"},
    "head": {"linear", "mlp"},
    "state": {"pending", "running", "restarting", "succeeded", "failed", "cancelled", "idle", "busy", "lost"},
}

COORDINATOR_ARGS = [
    "--listen", "0.0.0.0:7070", "--http-listen", "0.0.0.0:9464",
    "--store", "/var/lib/amdim/coordinator.db",
    "--client-token-file", "/etc/amdim/tokens/client-token",
    "--join-token-file", "/etc/amdim/tokens/join-token",
]
STANDARD_LABELS = [
    "app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by", "helm.sh/chart",
]
AWS_ENV = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ALLOW_HTTP"]

try:
    import helm_python as helm
    import jsonschema
    import kubernetes_validate
    import kubernetes_validate.utils as kv
    import yaml
except ImportError as e:  # pragma: no cover - depends on the machine
    print(f"check_chart: {e.name} is missing: pip install helm-python-sdk kubernetes-validate", file=sys.stderr)
    sys.exit(2)

import check_extras  # noqa: E402  (needs the packages above)


class Checks:
    """Collects failures instead of stopping at the first one."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.failures: list[str] = []
        self.passed = 0
        self.notes: list[str] = []

    def ok(self, cond: bool, what: str) -> bool:
        if cond:
            self.passed += 1
            if self.verbose:
                print(f"  ok    {what}")
        else:
            self.failures.append(what)
            print(f"  FAIL  {what}")
        return cond

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
            print(f"  note  {text}")


# --- rendering ----------------------------------------------------------------


def render(chart: "helm.Chart", values: dict | None) -> list[dict]:
    """Renders the chart and returns its objects (NOTES.txt dropped)."""
    out = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = []
    for path in sorted(out):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(out[path]):
            if doc:
                doc.setdefault("_source", path)
                objects.append(doc)
    return objects


def notes(chart: "helm.Chart", values: dict | None) -> str:
    out = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return next((v for k, v in out.items() if k.endswith("NOTES.txt")), "")


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict], kind: str, component: str) -> dict | None:
    found = [o for o in by_kind(objects, kind) if o["metadata"]["labels"].get("app.kubernetes.io/component") == component]
    return found[0] if len(found) == 1 else None


def workloads(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")]


def containers(workload: dict) -> list[dict]:
    spec = workload["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec.get("containers", [])


def env_map(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


# --- Kubernetes schemas -------------------------------------------------------------


def validate_objects(c: Checks, case: str, objects: list[dict]) -> None:
    versions = [kv.latest_version() if v == "latest" else v for v in KUBE_VERSIONS]
    for obj in objects:
        clean = {k: v for k, v in obj.items() if k != "_source"}
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            instead = ("its rule groups go through promtool check rules and promtool test rules instead"
                       if obj["kind"] == "PrometheusRule" else "its selectors and ports are checked against the Services instead")
            c.note(f"{obj['kind']} ({obj['apiVersion']}) is a CRD without a schema in kubernetes-validate: skipped there; {instead}")
            continue
        if obj["apiVersion"].startswith("cert-manager.io/"):
            c.note(f"{obj['kind']} ({obj['apiVersion']}) is a CRD without a schema in kubernetes-validate: "
                   "skipped there; checked against the cert-manager.io/v1 fields and the coordinator Service instead")
            errors = sorted(jsonschema.Draft7Validator(CERTIFICATE_SCHEMA).iter_errors(clean), key=lambda e: list(e.path))
            c.ok(not errors, f"[{case}] {name} is a valid cert-manager.io/v1 Certificate (strict)"
                 + "".join(f"; {'.'.join(str(p) for p in e.path)}: {e.message}" for e in errors))
            continue
        for version in versions:
            try:
                kv.validate(clean, version, strict=True)
                c.ok(True, f"[{case}] {name} is valid for Kubernetes {version} (strict)")
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                c.ok(False, f"[{case}] {name} is not valid for Kubernetes {e.version} (strict): {path}: {e.message}")
            except kv.SchemaNotFoundError as e:
                c.ok(False, f"[{case}] {name}: {e.message}")


# --- conventions ---------------------------------------------------------------


def check_conventions(c: Checks, case: str, objects: list[dict]) -> None:
    services = by_kind(objects, "Service")
    for obj in objects:
        labels = obj["metadata"].get("labels", {})
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        missing = [k for k in STANDARD_LABELS if k not in labels]
        c.ok(not missing, f"[{case}] {name} has the standard labels {missing or ''}".rstrip())
        c.ok(obj["metadata"].get("namespace") == NAMESPACE, f"[{case}] {name} is in the release namespace")

    for w in workloads(objects):
        name = f"{w['kind']}/{w['metadata']['name']}"
        tmpl = w["spec"]["template"]
        pod = tmpl["spec"]
        psc = pod.get("securityContext", {})
        selector = w["spec"]["selector"]["matchLabels"]
        c.ok(all(tmpl["metadata"]["labels"].get(k) == v for k, v in selector.items()),
             f"[{case}] {name}: the selector matches the pod labels")
        c.ok(psc.get("runAsNonRoot") is True, f"[{case}] {name}: pod runAsNonRoot")
        c.ok(psc.get("runAsUser", 0) != 0 and psc.get("runAsGroup", 0) != 0, f"[{case}] {name}: pod runs as a non-zero uid/gid")
        c.ok(psc.get("fsGroup") == 10001, f"[{case}] {name}: pod fsGroup 10001")
        c.ok(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"[{case}] {name}: pod seccomp RuntimeDefault")
        c.ok(pod.get("automountServiceAccountToken") is False, f"[{case}] {name}: no service-account token mounted")
        c.ok("checksum/secret" in tmpl["metadata"].get("annotations", {}), f"[{case}] {name}: checksum/secret annotation")
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for ctr in containers(w):
            cname = f"{name} container {ctr['name']}"
            sc = ctr.get("securityContext", {})
            c.ok(sc.get("allowPrivilegeEscalation") is False, f"[{case}] {cname}: allowPrivilegeEscalation false")
            c.ok(sc.get("readOnlyRootFilesystem") is True, f"[{case}] {cname}: read-only root filesystem")
            c.ok("ALL" in sc.get("capabilities", {}).get("drop", []), f"[{case}] {cname}: drops ALL capabilities")
            c.ok(sc.get("privileged") is not True, f"[{case}] {cname}: not privileged")
            c.ok(sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True and sc.get("runAsUser", psc.get("runAsUser", 0)) != 0,
                 f"[{case}] {cname}: runs as non-root")
            seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {}))
            c.ok(seccomp.get("type") == "RuntimeDefault", f"[{case}] {cname}: seccomp RuntimeDefault")
            res = ctr.get("resources", {})
            c.ok(bool(res.get("requests", {}).get("cpu")) and bool(res.get("requests", {}).get("memory")),
                 f"[{case}] {cname}: cpu and memory requests")
            c.ok(bool(res.get("limits", {}).get("memory")), f"[{case}] {cname}: a memory limit")
            ports = {p["name"]: p["containerPort"] for p in ctr.get("ports", [])}
            for probe in ("livenessProbe", "readinessProbe"):
                p = ctr.get(probe)
                c.ok(bool(p and p.get("httpGet")), f"[{case}] {cname}: {probe} (httpGet)")
                if p and p.get("httpGet"):
                    c.ok(p["httpGet"]["port"] in ports, f"[{case}] {cname}: {probe} port {p['httpGet']['port']} is a named container port")
            want_path = "/healthz", "/readyz"
            got_path = (ctr.get("livenessProbe", {}).get("httpGet", {}).get("path"),
                        ctr.get("readinessProbe", {}).get("httpGet", {}).get("path"))
            c.ok(got_path == want_path, f"[{case}] {cname}: probes on /healthz and /readyz")
            mounts = {m["mountPath"]: m for m in ctr.get("volumeMounts", [])}
            c.ok(all(m["name"] in volumes for m in mounts.values()), f"[{case}] {cname}: every volumeMount has a volume")
            c.ok("/tmp" in mounts and "emptyDir" in volumes.get(mounts["/tmp"]["name"], {}), f"[{case}] {cname}: writable /tmp emptyDir")
            tokens = mounts.get("/etc/amdim/tokens")
            c.ok(bool(tokens and tokens.get("readOnly") is True and "secret" in volumes.get(tokens["name"], {})),
                 f"[{case}] {cname}: tokens mounted read-only from the Secret at /etc/amdim/tokens")
            env = env_map(ctr)
            for var in AWS_ENV:
                ref = env.get(var, {}).get("valueFrom", {}).get("secretKeyRef", {})
                c.ok(bool(ref.get("name")) and ref.get("optional") is True, f"[{case}] {cname}: {var} from the Secret (optional)")

    # Every Service selects a workload and targets one of its named ports.
    pods = [(w["spec"]["template"]["metadata"]["labels"], containers(w)) for w in workloads(objects)]
    for svc in services:
        name = f"Service/{svc['metadata']['name']}"
        sel = svc["spec"].get("selector", {})
        matched = [ctrs for labels, ctrs in pods if all(labels.get(k) == v for k, v in sel.items())]
        c.ok(len(matched) == 1, f"[{case}] {name}: the selector matches exactly one workload")
        if matched:
            named = {p["name"] for ctr in matched[0] for p in ctr.get("ports", [])}
            for port in svc["spec"]["ports"]:
                c.ok(port["targetPort"] in named, f"[{case}] {name}: targetPort {port['targetPort']} is a container port")

    for sm in by_kind(objects, "ServiceMonitor"):
        name = f"ServiceMonitor/{sm['metadata']['name']}"
        sel = sm["spec"]["selector"]["matchLabels"]
        matched = [s for s in services if all(s["metadata"]["labels"].get(k) == v for k, v in sel.items())]
        c.ok(len(matched) == 1, f"[{case}] {name}: selects exactly one Service")
        for ep in sm["spec"]["endpoints"]:
            names = {p["name"] for s in matched for p in s["spec"]["ports"]}
            c.ok(ep["port"] in names, f"[{case}] {name}: endpoint port {ep['port']} is a Service port")
            c.ok(ep.get("path") == "/metrics" and "honorLabels" not in ep, f"[{case}] {name}: /metrics with default scrape settings (no honorLabels)")


def check_commands(c: Checks, case: str, objects: list[dict]) -> None:
    coord = one(objects, "Deployment", "coordinator")
    worker = one(objects, "StatefulSet", "worker")
    if not c.ok(coord is not None and worker is not None, f"[{case}] one coordinator Deployment and one worker StatefulSet"):
        return
    c.ok(coord["spec"]["replicas"] == 1 and coord["spec"]["strategy"]["type"] == "Recreate",
         f"[{case}] coordinator: 1 replica, Recreate")
    cc = coord["spec"]["template"]["spec"]["containers"][0]
    c.ok("command" not in cc and cc["args"][: len(COORDINATOR_ARGS)] == COORDINATOR_ARGS,
         f"[{case}] coordinator arguments (the image's tini entrypoint kept)")
    c.ok({p["name"]: p["containerPort"] for p in cc["ports"]} == {"grpc": 7070, "http": 9464}, f"[{case}] coordinator ports grpc 7070, http 9464")
    state = next((m for m in cc["volumeMounts"] if m["mountPath"] == "/var/lib/amdim"), None)
    c.ok(state is not None, f"[{case}] coordinator state volume at /var/lib/amdim")

    ws = worker["spec"]
    c.ok(ws["podManagementPolicy"] == "Parallel", f"[{case}] worker StatefulSet is Parallel")
    headless = [s for s in by_kind(objects, "Service") if s["metadata"]["name"] == ws["serviceName"]]
    c.ok(len(headless) == 1 and headless[0]["spec"].get("clusterIP") == "None", f"[{case}] worker serviceName is a headless Service")
    wc = ws["template"]["spec"]["containers"][0]
    # gRPC TLS: on exactly when the coordinator gets a certificate; then the
    # workers dial https:// (and off, no TLS flag or mount anywhere).
    tls = "--tls-cert-file" in cc["args"]
    tail = cc["args"][len(COORDINATOR_ARGS):]
    c.ok(tail[:4] == TLS_COORDINATOR_ARGS if tls else "--tls-key-file" not in tail,
         f"[{case}] coordinator TLS arguments {'follow the base arguments' if tls else 'absent'}")
    cvols = {v["name"]: v for v in coord["spec"]["template"]["spec"]["volumes"]}
    cmount = next((m for m in cc["volumeMounts"] if m["mountPath"] == TLS_DIR), None)
    if tls:
        secret = cvols.get(cmount["name"], {}).get("secret", {}) if cmount else {}
        c.ok(bool(cmount) and cmount.get("readOnly") is True and bool(secret.get("secretName"))
             and sorted(i["key"] for i in secret.get("items", [])) == ["tls.crt", "tls.key"],
             f"[{case}] coordinator mounts tls.crt and tls.key read-only from a Secret at {TLS_DIR}")
    else:
        c.ok(cmount is None, f"[{case}] coordinator: no {TLS_DIR} mount without TLS")
    svc = f"{'https' if tls else 'http'}://{coord['metadata']['name']}:7070"
    expected = ["agent", "--coordinator", svc, "--advertise-host", "$(POD_IP)",
                "--metrics-listen", "0.0.0.0:9465", "--join-token-file", "/etc/amdim/tokens/join-token"]
    c.ok("command" not in wc and wc["args"][: len(expected)] == expected,
         f"[{case}] worker arguments (the image's tini entrypoint kept), --coordinator {svc}")
    devices = wc["args"][wc["args"].index("--devices") + 1] if "--devices" in wc["args"] else None
    c.ok(devices == "1", f"[{case}] a CPU worker offers one device (--devices {devices})")
    wvols = {v["name"]: v for v in ws["template"]["spec"]["volumes"]}
    wkeys = [i["key"] for v in wvols.values() for i in v.get("secret", {}).get("items", [])]
    c.ok("tls.key" not in wkeys and all("items" in v["secret"] for v in wvols.values() if "secret" in v),
         f"[{case}] workers never mount the coordinator's TLS key")
    if not tls:
        c.ok("--tls-ca-file" not in wc["args"] and not any(m["mountPath"] == TLS_DIR for m in wc["volumeMounts"]),
             f"[{case}] workers: no --tls-ca-file and no {TLS_DIR} mount without TLS")
    pod_ip = env_map(wc).get("POD_IP", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    c.ok(pod_ip == "status.podIP", f"[{case}] worker POD_IP from status.podIP")
    c.ok({p["name"]: p["containerPort"] for p in wc["ports"]} == {"metrics": 9465}, f"[{case}] worker port metrics 9465")
    vols = {v["name"]: v for v in ws["template"]["spec"]["volumes"]}
    shm = next((m for m in wc["volumeMounts"] if m["mountPath"] == "/dev/shm"), None)
    c.ok(bool(shm) and vols.get(shm["name"], {}).get("emptyDir", {}).get("medium") == "Memory", f"[{case}] worker /dev/shm is a Memory emptyDir")
    tokens = vols.get("tokens", {})
    keys = [i["key"] for i in tokens.get("secret", {}).get("items", [])]
    c.ok(keys == ["join-token"], f"[{case}] workers see the join token only")


# --- the cases --------------------------------------------------------------------


def run_cases(c: Checks, chart: "helm.Chart", gpu_values: dict) -> int:
    renders = 0

    def rendered(case: str, values: dict | None) -> list[dict]:
        nonlocal renders
        try:
            objects = render(chart, values)
        except helm.HelmError as e:
            c.ok(False, f"[{case}] renders: {e}")
            return []
        renders += 1
        c.ok(True, f"[{case}] renders ({len(objects)} objects)")
        validate_objects(c, case, objects)
        check_conventions(c, case, objects)
        check_commands(c, case, objects)
        return objects

    def must_fail(case: str, values: dict, message: str) -> None:
        try:
            chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
            c.ok(False, f"[{case}] must refuse to render, but rendered")
        except helm.HelmError as e:
            c.ok(message in str(e), f"[{case}] refuses to render with {message!r} (got: {str(e).strip()})")

    # (a) defaults
    objects = rendered("defaults", None)
    if objects:
        kinds = sorted(o["kind"] for o in objects)
        c.ok(kinds == sorted(["Deployment", "PersistentVolumeClaim", "Pod", "Secret", "Service", "Service", "ServiceAccount", "StatefulSet"]),
             f"[defaults] objects: {kinds} (the Pod: the helm test hook)")
        secret = by_kind(objects, "Secret")[0]
        c.ok(set(secret["data"]) == {"client-token", "join-token"}, "[defaults] Secret holds the two tokens and no empty S3 keys")
        c.ok(all(len(base64.b64decode(v)) == 32 for v in secret["data"].values()), "[defaults] generated tokens are 32 characters")
        worker = one(objects, "StatefulSet", "worker")
        wc = worker["spec"]["template"]["spec"]["containers"][0]
        c.ok(worker["spec"]["replicas"] == 2, "[defaults] 2 workers")
        c.ok(worker["spec"]["updateStrategy"] == {"type": "OnDelete"}, "[defaults] workers: updateStrategy OnDelete (an upgrade never restarts a job)")
        grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        c.ok(grace >= 4 * 27.5, f"[defaults] workers: terminationGracePeriodSeconds {grace} >= 4 x the 27.5 s final checkpoint")
        c.ok(wc["image"] == f"amdim/worker:{chart.metadata['appVersion']}", f"[defaults] CPU worker image {wc['image']}")
        c.ok("nvidia.com/gpu" not in wc["resources"].get("limits", {}), "[defaults] no GPU limit on CPU workers")
        coord = one(objects, "Deployment", "coordinator")
        c.ok(coord["spec"]["template"]["spec"]["containers"][0]["image"] == f"amdim/coordinator:{chart.metadata['appVersion']}",
             "[defaults] coordinator image tag is the appVersion")
        c.ok(wc["imagePullPolicy"] == "IfNotPresent", "[defaults] pullPolicy IfNotPresent")
        text = notes(chart, None)
        c.ok("port-forward" in text and "submit -f job.toml --watch" in text and "jsonpath='{.data.client-token}'" in text,
             "[defaults] NOTES.txt shows port-forward, the client token and submit")

    # (b) the GPU values
    objects = rendered("values-gpu", gpu_values)
    if objects:
        worker = one(objects, "StatefulSet", "worker")
        wc = worker["spec"]["template"]["spec"]["containers"][0]
        gpus = wc["resources"].get("limits", {}).get("nvidia.com/gpu")
        c.ok(gpus is not None and int(gpus) >= 1, f"[values-gpu] worker GPU limit nvidia.com/gpu = {gpus}")
        devices = wc["args"][wc["args"].index("--devices") + 1] if "--devices" in wc["args"] else None
        c.ok(gpus is not None and devices == str(gpus), f"[values-gpu] the agent offers its {gpus} GPU(s): --devices {devices}")
        c.ok(wc["image"].startswith("amdim/worker-cuda:"), f"[values-gpu] CUDA worker image {wc['image']}")
        pod = worker["spec"]["template"]["spec"]
        c.ok(pod.get("nodeSelector", {}).get("nvidia.com/gpu.present") == "true", "[values-gpu] GPU node selector")
        c.ok(any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", [])), "[values-gpu] nvidia.com/gpu toleration")
        c.ok(env_map(wc).get("AMDIM_LOG_JSON", {}).get("value") == "true", "[values-gpu] JSON logs")
        c.ok(len(by_kind(objects, "ServiceMonitor")) == 2, "[values-gpu] two ServiceMonitors (coordinator, workers)")
        pdbs = by_kind(objects, "PodDisruptionBudget")
        c.ok(len(pdbs) == 1 and pdbs[0]["spec"]["selector"]["matchLabels"] == worker["spec"]["selector"]["matchLabels"],
             "[values-gpu] a PodDisruptionBudget over the workers")

    # (c) a PDB over one worker must not render
    must_fail("pdb-one-worker", {"pdb": {"enabled": True}, "worker": {"replicas": 1}}, PDB_FAILURE)
    must_fail("pdb-both-bounds", {"pdb": {"enabled": True, "minAvailable": 1, "maxUnavailable": 1}}, "exactly one of pdb.minAvailable")

    # (d) an existing Secret: none rendered, pods read that one
    objects = rendered("existingSecret", {"existingSecret": "my-amdim-secret"})
    if objects:
        c.ok(not by_kind(objects, "Secret"), "[existingSecret] no Secret rendered")
        refs = {v["secret"]["secretName"] for w in workloads(objects) for v in w["spec"]["template"]["spec"]["volumes"] if "secret" in v}
        refs |= {e["valueFrom"]["secretKeyRef"]["name"] for w in workloads(objects) for ctr in containers(w)
                 for e in ctr.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
        c.ok(refs == {"my-amdim-secret"}, f"[existingSecret] pods read my-amdim-secret only ({sorted(refs)})")

    # More switches.
    objects = rendered("s3-and-tokens", {
        "auth": {"clientToken": "client-abc", "joinToken": "join-xyz"},
        "s3": {"accessKeyId": "AKIA", "secretAccessKey": "s3cr3t", "endpointUrl": "http://minio:9000", "region": "us-east-1", "allowHttp": True},
        "commonLabels": {"team": "ml"}, "commonAnnotations": {"owner": "ml-platform"},
        "imagePullSecrets": [{"name": "regcred"}],
        "coordinator": {"extraArgs": ["--heartbeat-timeout-s", "30"], "image": {"registry": "ghcr.io", "repository": "amdim/coordinator", "tag": "v9", "pullPolicy": "Always"}},
    })
    if objects:
        data = {k: base64.b64decode(v).decode() for k, v in by_kind(objects, "Secret")[0]["data"].items()}
        c.ok(data == {"client-token": "client-abc", "join-token": "join-xyz", "aws-access-key-id": "AKIA",
                      "aws-secret-access-key": "s3cr3t", "aws-endpoint-url": "http://minio:9000",
                      "aws-region": "us-east-1", "aws-allow-http": "true"}, "[s3-and-tokens] Secret keys and values")
        c.ok(all(o["metadata"]["labels"].get("team") == "ml" and o["metadata"].get("annotations", {}).get("owner") == "ml-platform" for o in objects),
             "[s3-and-tokens] commonLabels and commonAnnotations on every object")
        coord = one(objects, "Deployment", "coordinator")
        cc = coord["spec"]["template"]["spec"]["containers"][0]
        c.ok(cc["args"][-2:] == ["--heartbeat-timeout-s", "30"], "[s3-and-tokens] coordinator extraArgs appended")
        c.ok(cc["image"] == "ghcr.io/amdim/coordinator:v9", "[s3-and-tokens] image registry and tag")
        c.ok(all(w["spec"]["template"]["spec"].get("imagePullSecrets") == [{"name": "regcred"}] for w in workloads(objects)),
             "[s3-and-tokens] imagePullSecrets on both pods")

    objects = rendered("no-persistence", {"persistence": {"enabled": False}, "serviceAccount": {"create": False}, "fullnameOverride": "ml"})
    if objects:
        c.ok(not by_kind(objects, "PersistentVolumeClaim") and not by_kind(objects, "ServiceAccount"), "[no-persistence] no PVC, no ServiceAccount")
        vols = one(objects, "Deployment", "coordinator")["spec"]["template"]["spec"]["volumes"]
        c.ok(any(v["name"] == "state" and "emptyDir" in v for v in vols), "[no-persistence] state on an emptyDir")
        c.ok(one(objects, "Deployment", "coordinator")["metadata"]["name"] == "ml-coordinator", "[no-persistence] fullnameOverride")
    objects = rendered("existing-claim", {"persistence": {"existingClaim": "amdim-state", "storageClass": "-"}})
    if objects:
        vols = one(objects, "Deployment", "coordinator")["spec"]["template"]["spec"]["volumes"]
        c.ok(not by_kind(objects, "PersistentVolumeClaim") and any(v.get("persistentVolumeClaim", {}).get("claimName") == "amdim-state" for v in vols),
             "[existing-claim] uses persistence.existingClaim")
    objects = rendered("pdb-percent", {"pdb": {"enabled": True, "minAvailable": "50%", "maxUnavailable": ""}, "worker": {"replicas": 4}})
    if objects:
        c.ok(by_kind(objects, "PodDisruptionBudget")[0]["spec"] == {"minAvailable": "50%", "selector": one(objects, "StatefulSet", "worker")["spec"]["selector"]},
             "[pdb-percent] minAvailable 50%")

    check_tls_cases(c, chart, rendered, must_fail)
    check_extras.run(c, chart, rendered, must_fail, catalogue=WORKER_METRICS | COORDINATOR_METRICS | {BUILD_INFO})

    # values.schema.json rejects what the chart does not know.
    must_fail("schema-unknown-key", {"replicaCount": 3}, "additional properties 'replicaCount' not allowed")
    must_fail("schema-bad-enum", {"coordinator": {"image": {"repository": "x", "pullPolicy": "Sometimes"}}}, "pullPolicy")
    must_fail("schema-negative", {"worker": {"replicas": -1}}, "replicas")
    must_fail("schema-tls-unknown-key", {"tls": {"enabled": True, "existingSecret": "amdim-tls", "ca": "x"}},
              "additional properties 'ca' not allowed")
    return renders


ISSUER = {"name": "amdim-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
TLS_CERT_MANAGER = {"tls": {"enabled": True, "certManager": {"enabled": True, "issuerRef": ISSUER}}}


def tls_volume(workload: dict) -> tuple[dict | None, dict | None]:
    """The (volumeMount at TLS_DIR, its secret volume source) of a workload's first container."""
    pod = workload["spec"]["template"]["spec"]
    mount = next((m for m in pod["containers"][0].get("volumeMounts", []) if m["mountPath"] == TLS_DIR), None)
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    return mount, (vols.get(mount["name"], {}).get("secret") if mount else None)


def check_tls_cases(c: Checks, chart: "helm.Chart", rendered, must_fail) -> None:
    """gRPC TLS: from an existing Secret, from cert-manager, and refused without either."""

    def service_names(objects: list[dict]) -> list[str]:
        svc = one(objects, "Service", "coordinator")["metadata"]["name"]
        return [svc, f"{svc}.{NAMESPACE}", f"{svc}.{NAMESPACE}.svc", f"{svc}.{NAMESPACE}.svc.cluster.local"]

    def check_pods(case: str, objects: list[dict], secret: str, ca_key: str | None = "ca.crt") -> None:
        coord, worker = one(objects, "Deployment", "coordinator"), one(objects, "StatefulSet", "worker")
        cc, wc = coord["spec"]["template"]["spec"]["containers"][0], worker["spec"]["template"]["spec"]["containers"][0]
        url = f"https://{one(objects, 'Service', 'coordinator')['metadata']['name']}:7070"
        c.ok(cc["args"][len(COORDINATOR_ARGS):] == TLS_COORDINATOR_ARGS,
             f"[{case}] coordinator gets --tls-cert-file {TLS_DIR}/tls.crt --tls-key-file {TLS_DIR}/tls.key")
        mount, source = tls_volume(coord)
        c.ok(bool(mount) and mount.get("readOnly") is True and source is not None and source.get("secretName") == secret
             and source.get("items") == [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}],
             f"[{case}] coordinator mounts tls.crt / tls.key of Secret {secret} read-only at {TLS_DIR}")
        c.ok(wc["args"][wc["args"].index("--coordinator") + 1] == url, f"[{case}] workers dial {url}")
        mount, source = tls_volume(worker)
        if ca_key:
            after = wc["args"].index("/etc/amdim/tokens/join-token") + 1
            c.ok(wc["args"][after:after + 2] == TLS_WORKER_ARGS, f"[{case}] workers get --tls-ca-file {TLS_DIR}/ca.crt")
            c.ok(bool(mount) and mount.get("readOnly") is True and source is not None and source.get("secretName") == secret
                 and source.get("items") == [{"key": ca_key, "path": "ca.crt"}],
                 f"[{case}] workers mount only {ca_key} of Secret {secret}, read-only, as {TLS_DIR}/ca.crt")
        else:
            c.ok("--tls-ca-file" not in wc["args"] and mount is None,
                 f"[{case}] tls.caKey empty: workers use the system's roots (no --tls-ca-file, no CA mount)")

    # (e) TLS from an existing kubernetes.io/tls Secret.
    case = "tls-existingSecret"
    values = {"tls": {"enabled": True, "existingSecret": "amdim-tls"}}
    objects = rendered(case, values)
    if objects:
        check_pods(case, objects, "amdim-tls")
        c.ok(not by_kind(objects, "Certificate"), f"[{case}] no Certificate rendered")
        c.ok(one(objects, "Service", "coordinator")["spec"]["ports"][0]["port"] == 7070, f"[{case}] Service keeps grpc on 7070")
        text = notes(chart, values)
        c.ok("--server https://localhost:7070 --tls-ca-file amdim-ca.crt" in text
             and "get secret amdim-tls -o jsonpath='{.data.ca\\.crt}' | base64 -d > amdim-ca.crt" in text
             and 'export AMDIM_TLS_CA_FILE="$PWD/amdim-ca.crt"' in text and "https://amdim-coordinator:7070" in text
             and "must name (tls.certManager.includeLocalhost" in text,
             f"[{case}] NOTES.txt shows the https address, the CA from the Secret and --tls-ca-file")
    objects = rendered("tls-custom-ca-key", {"tls": {"enabled": True, "existingSecret": "amdim-tls", "caKey": "root.pem"},
                                             "worker": {"extraArgs": ["--foo"]}})
    if objects:
        check_pods("tls-custom-ca-key", objects, "amdim-tls", ca_key="root.pem")
        wc = one(objects, "StatefulSet", "worker")["spec"]["template"]["spec"]["containers"][0]
        c.ok(wc["args"][-5:] == [*TLS_WORKER_ARGS, "--devices", "1", "--foo"],
             "[tls-custom-ca-key] worker extraArgs follow --tls-ca-file and --devices")
        _, source = tls_volume(one(objects, "StatefulSet", "worker"))
        c.ok(bool(source) and source.get("items") == [{"key": "root.pem", "path": "ca.crt"}],
             "[tls-custom-ca-key] tls.caKey root.pem mounted as ca.crt")
    values = {"tls": {"enabled": True, "existingSecret": "public-tls", "caKey": ""}}
    objects = rendered("tls-system-roots", values)
    if objects:
        check_pods("tls-system-roots", objects, "public-tls", ca_key="")
        text = notes(chart, values)
        c.ok("--tls-ca-file" not in text and "AMDIM_TLS_CA_FILE" not in text and "system's roots" in text,
             "[tls-system-roots] NOTES.txt: no CA file, the system's roots")

    # (f) TLS from cert-manager: a Certificate for the Service's DNS names.
    case = "tls-certManager"
    objects = rendered(case, TLS_CERT_MANAGER)
    if objects:
        certs = by_kind(objects, "Certificate")
        if c.ok(len(certs) == 1, f"[{case}] one Certificate"):
            spec = certs[0]["spec"]
            names = service_names(objects)
            c.ok(spec["dnsNames"] == [*names, "localhost"], f"[{case}] Certificate dnsNames: the coordinator Service's names and localhost ({spec['dnsNames']})")
            c.ok(spec.get("ipAddresses") == ["127.0.0.1"], f"[{case}] Certificate ipAddresses 127.0.0.1 (port-forward)")
            c.ok(spec["secretName"] == "amdim-coordinator-tls", f"[{case}] Certificate secretName amdim-coordinator-tls")
            c.ok(spec["issuerRef"] == ISSUER, f"[{case}] Certificate issuerRef from tls.certManager.issuerRef")
            c.ok("server auth" in spec.get("usages", []), f"[{case}] Certificate usages include server auth")
            c.ok(spec.get("privateKey", {}).get("encoding") == "PKCS8", f"[{case}] private key PKCS#8 (PEM \"PRIVATE KEY\")")
            check_pods(case, objects, spec["secretName"])
        text = notes(chart, TLS_CERT_MANAGER)
        c.ok("get secret amdim-coordinator-tls -o jsonpath='{.data.ca\\.crt}'" in text and "ClusterIssuer amdim-ca" in text
             and "must name" not in text, f"[{case}] NOTES.txt: the CA from the cert-manager Secret")
    case = "tls-certManager-custom"
    objects = rendered(case, {"fullnameOverride": "ml", "tls": {"enabled": True, "certManager": {
        "enabled": True, "issuerRef": {"name": "corp-ca", "kind": "Issuer", "group": "cert-manager.io"},
        "secretName": "ml-grpc-cert", "clusterDomain": "corp.internal", "includeLocalhost": False,
        "extraDnsNames": ["amdim.example.com"]}}})
    if objects:
        cert = by_kind(objects, "Certificate")[0]["spec"] if by_kind(objects, "Certificate") else {}
        c.ok(cert.get("dnsNames") == ["ml-coordinator", "ml-coordinator.amdim", "ml-coordinator.amdim.svc",
                                      "ml-coordinator.amdim.svc.corp.internal", "amdim.example.com"]
             and "ipAddresses" not in cert, f"[{case}] dnsNames follow fullnameOverride, clusterDomain, extraDnsNames; no localhost")
        c.ok(cert.get("secretName") == "ml-grpc-cert", f"[{case}] tls.certManager.secretName")
        check_pods(case, objects, "ml-grpc-cert")
    objects = rendered("tls-off-certManager-on", {"tls": {"enabled": False, "certManager": {"enabled": True, "issuerRef": ISSUER}}})
    if objects:
        c.ok(not by_kind(objects, "Certificate"), "[tls-off-certManager-on] no Certificate while tls.enabled=false")

    # (g) TLS without a certificate source, or with two, must not render.
    must_fail("tls-alone", {"tls": {"enabled": True}}, TLS_FAILURE)
    must_fail("tls-both-sources", {"tls": {"enabled": True, "existingSecret": "amdim-tls", "certManager": {"enabled": True, "issuerRef": ISSUER}}},
              "tls.existingSecret (\"amdim-tls\") and tls.certManager.enabled=true are exclusive")
    must_fail("tls-certManager-no-issuer", {"tls": {"enabled": True, "certManager": {"enabled": True}}},
              "tls.certManager.enabled=true needs tls.certManager.issuerRef.name")


def check_schema_covers_values(c: Checks, chart: "helm.Chart") -> None:
    schema = chart.schema or {}
    c.ok(schema.get("$schema", "").startswith("http://json-schema.org/draft-07/schema"), "values.schema.json is draft-07")
    c.ok(schema.get("additionalProperties") is False, "values.schema.json: additionalProperties false at the top level")

    def walk(values: dict, node: dict, path: str) -> None:
        node = resolve(node)
        props = node.get("properties")
        if props is None:
            return
        for key, value in values.items():
            sub = props.get(key)
            c.ok(sub is not None, f"values.schema.json covers {path}{key}")
            if sub is not None and isinstance(value, dict) and value:
                walk(value, sub, f"{path}{key}.")

    def resolve(node: dict) -> dict:
        ref = node.get("$ref")
        if ref:
            return resolve(schema["definitions"][ref.rsplit("/", 1)[1]])
        return node

    walk(chart.values, schema, "")


# --- deploy/ monitoring files -----------------------------------------------------------------


def check_dashboard(c: Checks) -> None:
    try:
        dash = json.loads(DASHBOARD.read_text())
    except (OSError, ValueError) as e:
        c.ok(False, f"{DASHBOARD.relative_to(ROOT)} parses: {e}")
        return
    c.ok(35 <= dash.get("schemaVersion", 0) <= 41, f"dashboard schemaVersion {dash.get('schemaVersion')}")
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables.get("datasource", {})
    c.ok(ds.get("type") == "datasource" and ds.get("query") == "prometheus", "dashboard: datasource variable of type prometheus")
    job = variables.get("job_id", {})
    query = job.get("query", {})
    query = query.get("query") if isinstance(query, dict) else query
    c.ok(query == "label_values(amdim_train_step, job_id)", "dashboard: job_id variable from label_values(amdim_train_step, job_id)")
    c.ok("job" not in variables, "dashboard: no `job` variable (that label is Prometheus' scrape job)")

    panels = []
    for p in dash["panels"]:
        panels.append(p)
        panels.extend(p.get("panels", []))
    used: set[str] = set()
    exprs = []
    ids = [p["id"] for p in panels]
    c.ok(len(ids) == len(set(ids)), "dashboard: panel ids are unique")
    for p in panels:
        if p["type"] == "row":
            continue
        c.ok(p.get("datasource", {}).get("uid") == "${datasource}", f"dashboard panel {p['title']!r} uses ${{datasource}}")
        for t in p.get("targets", []):
            c.ok(t.get("datasource", {}).get("uid") == "${datasource}" and bool(t.get("expr")), f"dashboard panel {p['title']!r} target {t['refId']}")
            exprs.append(t["expr"])
    for e in exprs:
        for m in re.findall(r"\bamdim_[a-z0-9_]+", e):
            base = re.sub(r"_(bucket|sum|count)$", "", m) if re.sub(r"_(bucket|sum|count)$", "", m) in HISTOGRAMS else m
            c.ok(base in WORKER_METRICS | COORDINATOR_METRICS, f"dashboard metric {m} is in the catalogue")
            if base in HISTOGRAMS:
                c.ok(m.endswith("_bucket") or m.endswith("_sum") or m.endswith("_count"), f"dashboard uses histogram {base} through its series ({m})")
            used.add(base)
        for label, values in LABEL_VALUES.items():
            for v in re.findall(label + r'=~?"([^"]+)"', e):
                c.ok(set(v.split("|")) <= values, f"dashboard {label} values {v} are in the catalogue")
        c.ok(e.count("(") == e.count(")"), f"dashboard expression has balanced parentheses: {e}")
        c.ok(not re.search(r"\bjob\s*(=|!=|=~|!~)|\b(by|without|on|ignoring)\s*\([^)]*\bjob\b", e),
             f"dashboard expression selects and groups by job_id, not Prometheus' job: {e}")
    unused = sorted((WORKER_METRICS | COORDINATOR_METRICS) - used - {"amdim_train_step"})
    c.ok(not unused, f"dashboard shows every catalogue metric {unused or ''}".rstrip())
    titles = " ".join(p["title"].lower() for p in panels)
    for want in ["throughput", "loss", "accuracy", "breakdown", "step duration", "stragglers", "all-reduce", "all-gather",
                 "dataloader", "decode", "checkpoint", "jobs by state", "workers by state", "restarts"]:
        c.ok(want in titles, f"dashboard has a {want!r} panel")


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [a["expr"] for a in dash.get("annotations", {}).get("list", []) if "expr" in a]
    for p in dash["panels"]:
        for q in [p, *p.get("panels", [])]:
            exprs += [t["expr"] for t in q.get("targets", []) if t.get("expr")]
    return exprs


def check_with_promtool(c: Checks) -> None:
    """PromQL syntax of the dashboard and the Prometheus config, when promtool is here."""
    promtool = shutil.which("promtool")
    if not promtool:
        c.note("promtool not found: PromQL syntax and prometheus.yml not checked by Prometheus itself (apt-get install prometheus)")
        return
    lines = ["groups:", "  - name: amdim-dashboard", "    rules:"]
    for i, e in enumerate(dashboard_exprs()):
        e = e.replace("$__range", "1h").replace("$job_id", ".*").replace("$rank", ".*")
        lines += [f"      - record: amdim:dashboard_{i}", f"        expr: {json.dumps(e)}"]
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        f.write("\n".join(lines) + "\n")
    try:
        for args, what in (([promtool, "check", "rules", f.name], "dashboard PromQL parses (promtool check rules)"),
                           ([promtool, "check", "config", str(PROMETHEUS)], "prometheus.yml passes promtool check config")):
            r = subprocess.run(args, capture_output=True, text=True, timeout=60)
            c.ok(r.returncode == 0, what + ("" if r.returncode == 0 else f": {(r.stdout + r.stderr).strip()}"))
    finally:
        Path(f.name).unlink(missing_ok=True)


def check_prometheus(c: Checks) -> None:
    try:
        conf = yaml.safe_load(PROMETHEUS.read_text())
    except (OSError, yaml.YAMLError) as e:
        c.ok(False, f"{PROMETHEUS.relative_to(ROOT)} parses: {e}")
        return
    c.ok(conf.get("global", {}).get("scrape_interval") == "5s", "prometheus.yml: scrape_interval 5s")
    jobs = {j["job_name"]: j for j in conf.get("scrape_configs", [])}
    targets = {name: [t for sc in j.get("static_configs", []) for t in sc["targets"]] for name, j in jobs.items()}
    c.ok(targets.get("amdim-coordinator") == ["127.0.0.1:9464"], "prometheus.yml: amdim-coordinator scrapes 127.0.0.1:9464")
    c.ok(targets.get("amdim-worker") == ["127.0.0.1:9465", "127.0.0.1:9466"], "prometheus.yml: amdim-worker scrapes 127.0.0.1:9465 and :9466")
    c.ok(all("honor_labels" not in j for j in jobs.values()), "prometheus.yml: default scrape settings (no honor_labels)")


# --- main -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="print every passing check too")
    args = parser.parse_args()
    started = time.monotonic()
    c = Checks(args.verbose)
    print(f"helm-python-sdk {helm.__version__} (Helm {helm.helm_sdk_version()}), "
          f"kubernetes-validate {kubernetes_validate.__version__} (schemas up to {kv.latest_version()})")

    print("== helm lint --strict")
    gpu_values = helm.values_from_yaml(GPU_VALUES.read_text())
    for label, values in (("defaults", None), ("values-gpu", gpu_values), ("tls-certManager", TLS_CERT_MANAGER),
                          ("extras", check_extras.ALL_EXTRAS)):
        for kube in ("v1.29.0", f"v{kv.latest_version()}"):
            report = helm.lint(CHART, values, strict=True, kube_version=kube)
            bad = [m for m in report["messages"] if m["severity"] >= 2] + [{"error": e} for e in report["errors"]]
            for m in report["messages"]:
                if m["severity"] < 2:
                    c.note(f"lint info: {m['path']}: {m['error']}")
            c.ok(not bad, f"lint [{label}, Kubernetes {kube}] {'; '.join(m['error'] for m in bad)}".rstrip())

    print("== render, schemas and conventions")
    with helm.Chart.load(CHART) as chart:
        c.ok(chart.metadata.get("apiVersion") == "v2" and chart.name == "amdim" and chart.version == "0.1.0"
             and chart.metadata.get("appVersion") == "0.1.0", "Chart.yaml: v2, amdim 0.1.0, appVersion 0.1.0")
        renders = run_cases(c, chart, gpu_values)
        check_schema_covers_values(c, chart)

    print("== deploy/ monitoring files")
    check_dashboard(c)
    check_prometheus(c)
    check_with_promtool(c)

    elapsed = time.monotonic() - started
    print()
    print(f"{renders} renders, Kubernetes schemas {', '.join(KUBE_VERSIONS).replace('latest', kv.latest_version())} (strict), {elapsed:.1f} s")
    if c.failures:
        print("failed:")
        for f in c.failures:
            print(f"  - {f}")
    # The closing line CI reads: "N passed, N failed" alone on the line.
    print(f"check_chart: {c.passed} passed, {len(c.failures)} failed")
    return 1 if c.failures else 0


if __name__ == "__main__":
    sys.exit(main())
