"""The chart's operator extras, checked for check_chart.py (which calls run()).

  - the Grafana dashboard ConfigMap: the sidecar label, the folder
    annotation, and a body identical to deploy/grafana/amdim-dashboard.json
    (the chart's dashboards/ copy must be that file: a symlink, or equal bytes);
  - the PrometheusRule: its alerts, metric names from the catalogue,
    selectors scoped to this release's scrape jobs (the Services the
    ServiceMonitors select), thresholds from the values, `promtool check
    rules`, and `promtool test rules` on synthetic series (each alert fires
    when it should and stays quiet when it should not);
  - the NetworkPolicies: who may reach which named port;
  - the `helm test` Pod: `amdimctl health` against the coordinator Service,
    with the CA under TLS, as locked down as the other pods;
  - the workers' update strategy and grace period.

Objects also pass through check_chart's strict Kubernetes validation and
conventions via the `rendered` callback.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "amdim-dashboard.json"
CHART_DASHBOARD = ROOT / "helm" / "amdim" / "dashboards" / "amdim-dashboard.json"
NAMESPACE = "amdim"

ALL_EXTRAS = {
    "grafanaDashboard": {"enabled": True},
    "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "networkPolicy": {"enabled": True},
    "serviceMonitor": {"enabled": True},
}
ALERTS = {"AmdimJobStalled", "AmdimWorkersLost", "AmdimCheckpointFailures", "AmdimDecodeErrorsRising", "AmdimCoordinatorDown"}
# Metrics the coordinator exports (the rest of the catalogue is the workers').
COORDINATOR_SIDE = {"amdim_jobs", "amdim_workers", "amdim_job_step", "amdim_job_workers", "up"}
SCRAPERS = [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]


def _kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def _component(objects: list[dict], kind: str, component: str) -> dict | None:
    found = [o for o in _kind(objects, kind) if o["metadata"]["labels"].get("app.kubernetes.io/component") == component]
    return found[0] if len(found) == 1 else None


def run(c, chart, rendered, must_fail, catalogue: set[str]) -> None:
    objects = rendered("extras", ALL_EXTRAS)
    if objects:
        check_dashboard_configmap(c, objects)
        check_rule(c, objects, catalogue)
        check_network_policies(c, objects, clients=[])
        check_test_pod(c, objects, tls=False)
        notes = chart.render(ALL_EXTRAS, name="amdim", namespace=NAMESPACE, is_install=True)
        text = next((v for k, v in notes.items() if k.endswith("NOTES.txt")), "")
        c.ok("helm test amdim -n amdim" in text and "ConfigMap amdim-dashboard for Grafana's sidecar" in text,
             "[extras] NOTES.txt names helm test and the dashboard ConfigMap")
    off = rendered("extras-off", {"test": {"enabled": False}})
    if off:
        c.ok(not [o for o in off if o["kind"] in ("ConfigMap", "PrometheusRule", "NetworkPolicy", "Pod")],
             "[extras-off] no dashboard, rule, policy or test Pod unless enabled")

    objects = rendered("extras-custom", {
        "grafanaDashboard": {"enabled": True, "sidecarLabel": "", "folder": "ML", "labels": {"dash": "amdim"}},
        "prometheusRule": {"enabled": True, "additionalLabels": {"team": "ml"},
                           "jobStalled": {"enabled": True, "minutes": 40, "severity": "page"},
                           "decodeErrors": {"enabled": True, "ratio": 0.05, "window": "20m", "for": "5m", "severity": "warning"},
                           "coordinatorDown": {"enabled": False, "severity": "critical"}},
        "networkPolicy": {"enabled": True, "scrapers": [], "clients": [{"namespaceSelector": {"matchLabels": {"team": "ml"}}}]},
        "tls": {"enabled": True, "existingSecret": "amdim-tls"},
    })
    if objects:
        cm = _component(objects, "ConfigMap", "dashboard")
        meta = cm["metadata"] if cm else {}
        c.ok(bool(cm) and "grafana_dashboard" not in meta["labels"] and meta["labels"].get("dash") == "amdim"
             and meta.get("annotations", {}).get("grafana_folder") == "ML",
             "[extras-custom] dashboard: no sidecar label when empty, extra labels, folder annotation grafana_folder")
        rule = _kind(objects, "PrometheusRule")
        rules = [r for g in rule[0]["spec"]["groups"] for r in g["rules"]] if rule else []
        by_name = {r["alert"]: r for r in rules}
        c.ok("AmdimCoordinatorDown" not in by_name and len(by_name) == 4, "[extras-custom] a disabled alert is left out")
        stalled = by_name.get("AmdimJobStalled", {})
        c.ok("[40m]" in stalled.get("expr", "") and stalled.get("labels") == {"severity": "page", "team": "ml"},
             "[extras-custom] jobStalled.minutes, severity and additionalLabels reach the rule")
        decode = by_name.get("AmdimDecodeErrorsRising", {})
        c.ok(decode.get("expr", "").count("[20m]") == 2 and decode.get("expr", "").rstrip().endswith("> 0.05")
             and decode.get("for") == "5m", "[extras-custom] decodeErrors ratio, window and for reach the rule")
        check_network_policies(c, objects, clients=[{"namespaceSelector": {"matchLabels": {"team": "ml"}}}], scrapers=[])
        check_test_pod(c, objects, tls=True)

    check_update_strategy(c, rendered, must_fail)


# --- the dashboard ConfigMap ---------------------------------------------------------


def check_dashboard_configmap(c, objects: list[dict]) -> None:
    source = DASHBOARD.read_text()
    c.ok(CHART_DASHBOARD.resolve() == DASHBOARD.resolve() or CHART_DASHBOARD.read_bytes() == source.encode(),
         "helm/amdim/dashboards/amdim-dashboard.json is deploy/grafana/amdim-dashboard.json (one source)")
    cm = _component(objects, "ConfigMap", "dashboard")
    if not c.ok(cm is not None, "[extras] one dashboard ConfigMap"):
        return
    c.ok(cm["metadata"]["labels"].get("grafana_dashboard") == "1", "[extras] dashboard ConfigMap has the sidecar label grafana_dashboard: \"1\"")
    body = cm.get("data", {}).get("amdim-dashboard.json", "")
    c.ok(body.strip() == source.strip(), "[extras] the ConfigMap holds deploy/grafana/amdim-dashboard.json unchanged")
    c.ok(len(body.encode()) < 1 << 20, f"[extras] the dashboard fits a ConfigMap ({len(body.encode())} bytes < 1 MiB)")
    try:
        c.ok(json.loads(body).get("uid") == "amdim-training", "[extras] the ConfigMap's dashboard parses (uid amdim-training)")
    except ValueError as e:
        c.ok(False, f"[extras] the ConfigMap's dashboard parses: {e}")


# --- the PrometheusRule ---------------------------------------------------------------


def scrape_jobs(objects: list[dict]) -> dict[str, str]:
    """component -> the `job` the Prometheus Operator gives its targets (the Service's name)."""
    services = _kind(objects, "Service")
    jobs = {}
    for sm in _kind(objects, "ServiceMonitor"):
        sel = sm["spec"]["selector"]["matchLabels"]
        matched = [s for s in services if all(s["metadata"]["labels"].get(k) == v for k, v in sel.items())]
        if len(matched) == 1:
            jobs[sm["metadata"]["labels"]["app.kubernetes.io/component"]] = matched[0]["metadata"]["name"]
    return jobs


def check_rule(c, objects: list[dict], catalogue: set[str]) -> None:
    found = _kind(objects, "PrometheusRule")
    if not c.ok(len(found) == 1, "[extras] one PrometheusRule"):
        return
    rule = found[0]
    c.ok(rule["apiVersion"] == "monitoring.coreos.com/v1", "[extras] PrometheusRule is monitoring.coreos.com/v1")
    c.ok(rule["metadata"]["labels"].get("release") == "kube-prometheus-stack", "[extras] prometheusRule.labels on the PrometheusRule")
    rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    c.ok({r.get("alert") for r in rules} == ALERTS, f"[extras] alerts {sorted(r.get('alert', '?') for r in rules)}")
    jobs = scrape_jobs(objects)
    c.ok(set(jobs) == {"coordinator", "worker"}, f"[extras] the ServiceMonitors' Services name the scrape jobs {jobs}")
    for r in rules:
        name = r.get("alert", "?")
        c.ok(bool(r.get("labels", {}).get("severity")) and {"summary", "description"} <= set(r.get("annotations", {})),
             f"[extras] {name}: a severity label, a summary and a description")
        selectors = re.findall(r"\b(amdim_[a-z0-9_]+|up)\s*\{([^}]*)\}", r["expr"])
        bare = re.findall(r"\b(amdim_[a-z0-9_]+)\b(?!\s*\{)", r["expr"])
        c.ok(bool(selectors) and not bare, f"[extras] {name}: every metric has a selector")
        for metric, labels in selectors:
            c.ok(metric == "up" or metric in catalogue, f"[extras] {name}: {metric} is in the metric catalogue")
            job = jobs.get("coordinator" if metric in COORDINATOR_SIDE else "worker")
            c.ok(f'job="{job}"' in labels and f'namespace="{NAMESPACE}"' in labels,
                 f"[extras] {name}: {metric} is scoped to this release's scrape job {job} and namespace")
        c.ok("job_id" in r["expr"] or name in ("AmdimWorkersLost", "AmdimCoordinatorDown"),
             f"[extras] {name}: per-job alerts keep the job_id label")
    check_rule_with_promtool(c, rule, jobs)


def _series(metric: str, job: str, values: str, **labels: str) -> dict:
    extra = "".join(f',{k}="{v}"' for k, v in labels.items())
    return {"series": f'{metric}{{job="{job}",namespace="{NAMESPACE}"{extra}}}', "values": values}


def _alert_tests(rule: dict, jobs: dict[str, str]) -> dict:
    """promtool unit tests: synthetic series over 40 minutes, expected alerts at chosen times."""
    coord, workers = jobs["coordinator"], jobs["worker"]
    rules = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}

    def expect(alert: str, **labels: str) -> dict:
        r = rules[alert]
        notes = {k: v.replace("{{ $labels.job_id }}", labels.get("job_id", "")) for k, v in r["annotations"].items()}
        return {"exp_labels": {**r["labels"], "namespace": NAMESPACE, **labels}, "exp_annotations": notes}

    series = [
        # job-000001 moves for 10 minutes then stalls with its workers running; job-000002 keeps moving.
        _series("amdim_job_step", coord, "0+10x10 100x30", job_id="job-000001"),
        _series("amdim_job_workers", coord, "2x40", job_id="job-000001"),
        _series("amdim_job_step", coord, "0+1x40", job_id="job-000002"),
        _series("amdim_job_workers", coord, "2x40", job_id="job-000002"),
        # A worker is lost at minute 10 and never comes back.
        _series("amdim_workers", coord, "0x10 1x30", state="lost"),
        # The coordinator stops answering scrapes at minute 20.
        _series("up", coord, "1x20 0x20"),
        # job-000001 abandons a checkpoint at minute 20; it skips 1 of 60 samples (1.7 %), job-000002 none.
        _series("amdim_checkpoint_failures_total", workers, "0x20 1x20", job_id="job-000001", rank="0"),
        _series("amdim_decode_errors_total", workers, "0+1x40", job_id="job-000001", rank="0"),
        _series("amdim_train_samples_total", workers, "0+60x40", job_id="job-000001", rank="0"),
        _series("amdim_decode_errors_total", workers, "0x40", job_id="job-000002", rank="0"),
        _series("amdim_train_samples_total", workers, "0+60x40", job_id="job-000002", rank="0"),
    ]
    at = [
        ("20m", "AmdimJobStalled", []),
        ("30m", "AmdimJobStalled", [expect("AmdimJobStalled", job_id="job-000001")]),
        ("12m", "AmdimWorkersLost", []),
        ("30m", "AmdimWorkersLost", [expect("AmdimWorkersLost")]),
        ("10m", "AmdimCheckpointFailures", []),
        ("30m", "AmdimCheckpointFailures", [expect("AmdimCheckpointFailures", job_id="job-000001")]),
        ("5m", "AmdimDecodeErrorsRising", []),
        ("30m", "AmdimDecodeErrorsRising", [expect("AmdimDecodeErrorsRising", job_id="job-000001")]),
        ("22m", "AmdimCoordinatorDown", []),
        ("30m", "AmdimCoordinatorDown", [expect("AmdimCoordinatorDown")]),
    ]
    return {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [{"eval_time": t, "alertname": a, "exp_alerts": e} for t, a, e in at],
        }],
    }


def check_rule_with_promtool(c, rule: dict, jobs: dict[str, str]) -> None:
    promtool = shutil.which("promtool")
    if not promtool:
        c.note("promtool not found: the PrometheusRule's groups are not checked by Prometheus itself (apt-get install prometheus)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp, "rules.yml")
        rules.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
        r = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
        c.ok(r.returncode == 0, "[extras] the PrometheusRule's groups pass promtool check rules"
             + ("" if r.returncode == 0 else f": {(r.stdout + r.stderr).strip()}"))
        if set(jobs) != {"coordinator", "worker"}:
            return
        tests = Path(tmp, "tests.yml")
        tests.write_text(yaml.safe_dump(_alert_tests(rule, jobs), sort_keys=False))
        r = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True, timeout=60, cwd=tmp)
        c.ok(r.returncode == 0, "[extras] promtool test rules: each alert fires on its synthetic series and not before"
             + ("" if r.returncode == 0 else f": {(r.stdout + r.stderr).strip()}"))


# --- NetworkPolicies -------------------------------------------------------------------


def check_network_policies(c, objects: list[dict], clients: list[dict], scrapers: list[dict] | None = None) -> None:
    scrapers = SCRAPERS if scrapers is None else scrapers
    policies = {p["metadata"]["labels"].get("app.kubernetes.io/component"): p for p in _kind(objects, "NetworkPolicy")}
    if not c.ok(set(policies) == {"coordinator", "worker"}, f"[network] one NetworkPolicy per component ({sorted(policies)})"):
        return
    worker = _component(objects, "StatefulSet", "worker")
    coord = _component(objects, "Deployment", "coordinator")
    test = _component(objects, "Pod", "test")
    worker_pods = worker["spec"]["selector"]["matchLabels"]

    def ports(workload: dict) -> set[str]:
        return {p["name"] for ctr in workload["spec"]["template"]["spec"]["containers"] for p in ctr.get("ports", [])}

    for component, workload in (("worker", worker), ("coordinator", coord)):
        spec = policies[component]["spec"]
        c.ok(spec["podSelector"]["matchLabels"] == workload["spec"]["selector"]["matchLabels"],
             f"[network] the {component} policy selects the {component} pods")
        c.ok(spec["policyTypes"] == ["Ingress"], f"[network] the {component} policy restricts ingress only (DNS, S3 egress open)")
        for rule in spec["ingress"]:
            for p in rule.get("ports", []):
                c.ok(p["port"] in ports(workload), f"[network] {component}: port {p['port']} is a named container port")

    wrules = policies["worker"]["spec"]["ingress"]
    c.ok({"from": [{"podSelector": {"matchLabels": worker_pods}}]} in wrules,
         "[network] workers accept every port from workers (the collective mesh)")
    c.ok(({"from": scrapers, "ports": [{"port": "metrics", "protocol": "TCP"}]} in wrules) == bool(scrapers),
         "[network] workers accept the scrapers on metrics only" if scrapers else "[network] no scraper rule without scrapers")
    c.ok(len(wrules) == 1 + bool(scrapers), "[network] the worker policy has no other rule")

    crules = policies["coordinator"]["spec"]["ingress"]
    grpc = [r for r in crules if r.get("ports") == [{"port": "grpc", "protocol": "TCP"}]]
    peers = grpc[0]["from"] if len(grpc) == 1 else []
    c.ok({"podSelector": {"matchLabels": worker_pods}} in peers, "[network] the coordinator accepts gRPC from the workers")
    test_labels = test["metadata"]["labels"] if test else {}
    c.ok(any(all(test_labels.get(k) == v for k, v in p.get("podSelector", {}).get("matchLabels", {"-": "-"}).items())
             and "namespaceSelector" not in p for p in peers),
         "[network] the coordinator accepts gRPC from the helm test Pod")
    c.ok(all(p in peers for p in clients) and len(peers) == 2 + len(clients), "[network] networkPolicy.clients reach gRPC, nobody else")
    c.ok(({"from": scrapers, "ports": [{"port": "http", "protocol": "TCP"}]} in crules) == bool(scrapers),
         "[network] the coordinator accepts the scrapers on http only" if scrapers else "[network] coordinator: no scraper rule")
    c.ok(len(crules) == 1 + bool(scrapers), "[network] the coordinator policy has no other rule")


# --- the helm test Pod ------------------------------------------------------------------


def check_test_pod(c, objects: list[dict], tls: bool) -> None:
    case = "test-pod-tls" if tls else "test-pod"
    pod = _component(objects, "Pod", "test")
    if not c.ok(pod is not None, f"[{case}] one helm test Pod"):
        return
    ann = pod["metadata"].get("annotations", {})
    c.ok(ann.get("helm.sh/hook") == "test" and "hook-succeeded" in ann.get("helm.sh/hook-delete-policy", ""),
         f"[{case}] a `helm test` hook, deleted when it passed")
    spec = pod["spec"]
    c.ok(spec.get("restartPolicy") == "Never" and len(spec["containers"]) == 1, f"[{case}] one container, never restarted")
    ctr = spec["containers"][0]
    coord = _component(objects, "Deployment", "coordinator")
    c.ok(ctr["image"] == coord["spec"]["template"]["spec"]["containers"][0]["image"], f"[{case}] the coordinator image (it ships amdimctl)")
    url = f"{'https' if tls else 'http'}://{_component(objects, 'Service', 'coordinator')['metadata']['name']}:7070"
    want = ["--server", url, *(["--tls-ca-file", "/etc/amdim/tls/ca.crt"] if tls else []), "health", "--timeout-s", "10"]
    c.ok(ctr.get("command") == ["/usr/bin/tini", "--", "amdimctl"] and ctr.get("args") == want,
         f"[{case}] runs amdimctl {' '.join(want)}")
    sc = ctr.get("securityContext", {})
    c.ok(sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
         and "ALL" in sc.get("capabilities", {}).get("drop", []) and spec.get("securityContext", {}).get("runAsNonRoot") is True,
         f"[{case}] non-root, read-only root, no capabilities")
    c.ok(bool(ctr.get("resources", {}).get("limits", {}).get("memory")), f"[{case}] a memory limit")
    c.ok(spec.get("automountServiceAccountToken") is False, f"[{case}] no service-account token")
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    items = [i["key"] for v in vols.values() for i in v.get("secret", {}).get("items", [])]
    c.ok(items == (["ca.crt"] if tls else []), f"[{case}] mounts {'only the CA' if tls else 'no Secret'} ({items})")


# --- the workers' update strategy ------------------------------------------------------------


def check_update_strategy(c, rendered, must_fail) -> None:
    objects = rendered("rolling-update", {"worker": {"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}},
                                                     "terminationGracePeriodSeconds": 300}})
    if objects:
        sts = _component(objects, "StatefulSet", "worker")
        c.ok(sts["spec"]["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}},
             "[rolling-update] worker.updateStrategy RollingUpdate with its partition")
        c.ok(sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 300, "[rolling-update] worker.terminationGracePeriodSeconds")
    must_fail("update-strategy-unknown", {"worker": {"updateStrategy": {"type": "Recreate"}}}, "updateStrategy")
    must_fail("update-strategy-ondelete-rolling", {"worker": {"updateStrategy": {"type": "OnDelete", "rollingUpdate": {"partition": 1}}}},
              "updateStrategy")
