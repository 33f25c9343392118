"""Invariants of the Kubernetes manifests, checked on the YAML that `kubectl kustomize` renders.

    invariants.py ROOT RENDERED.yaml              one PASS/FAIL line per invariant; exit 1 if any failed
    invariants.py ROOT RENDERED.yaml --mutations  breaks the rendered objects in known ways (a grace period not
                                                  above preStop + graceful_timeout, a mutable image tag, ...); each
                                                  must be caught

ROOT is the repository root: graceful_timeout's default comes from conf/supervisor.toml and the pinned nginx and
PostgreSQL images from compose/prod.yml, so Kubernetes cannot drift from what Compose runs. Needs PyYAML.
"""

import copy
import math
import re
import sys
import tomllib
from pathlib import Path

import yaml

APP = "prefork"
API_PORT = 8000
# Connections PostgreSQL keeps for superusers (superuser_reserved_connections' default), and those of the
# migration Job (one) and an operator's psql or backup (one).
RESERVED_CONNECTIONS = 3
OTHER_CONNECTIONS = 2


class Manifests:
    def __init__(self, docs):
        self.docs = [d for d in docs if d]

    def get(self, kind, name):
        for d in self.docs:
            if d["kind"] == kind and d["metadata"]["name"] == name:
                return d
        raise KeyError(f"no {kind} {name}")

    def of_kind(self, kind):
        return [d for d in self.docs if d["kind"] == kind]

    def workloads(self):
        return [d for d in self.docs if d["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet")]

    def configmap(self, prefix):
        # Generated names carry a hash suffix.
        found = [
            d for d in self.of_kind("ConfigMap") if re.fullmatch(prefix + r"(-[a-z0-9]{10})?", d["metadata"]["name"])
        ]
        if len(found) != 1:
            raise KeyError(f"expected one ConfigMap {prefix}, found {len(found)}")
        return found[0]


def pod_spec(workload):
    return workload["spec"]["template"]["spec"]


def containers(m):
    """(where, workload, container) for every container of every workload, init containers included."""
    for w in m.workloads():
        for c in pod_spec(w)["containers"] + pod_spec(w).get("initContainers", []):
            yield f"{w['kind']}/{w['metadata']['name']}/{c['name']}", w, c


def api_workload(m):
    deployment = m.get("Deployment", "api")
    return deployment, container(deployment, "api")


def container(workload, name):
    for c in pod_spec(workload)["containers"]:
        if c["name"] == name:
            return c
    raise KeyError(f"no container {name} in {workload['metadata']['name']}")


def env(c, name):
    for e in c.get("env", []):
        if e["name"] == name:
            return e
    return None


def seconds(value):
    """nginx or plain durations: 65s, 1m, 30 -> seconds."""
    m = re.fullmatch(r"(\d+)(ms|s|m|h)?", str(value).strip())
    if not m:
        raise ValueError(f"not a duration: {value!r}")
    n, unit = int(m.group(1)), m.group(2) or "s"
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def cpus(quantity):
    q = str(quantity)
    return int(q[:-1]) / 1000 if q.endswith("m") else float(q)


def pre_stop_seconds(c):
    handler = c.get("lifecycle", {}).get("preStop")
    if not handler:
        return None
    if "sleep" in handler:
        return handler["sleep"]["seconds"]
    command = handler.get("exec", {}).get("command", [])
    if len(command) == 2 and command[0] in ("sleep", "/bin/sleep"):
        return int(command[1])
    return None


def port_number(c, port):
    if isinstance(port, int):
        return port
    for p in c.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    return None


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


# ------------------------------------------------------------------------------------------------- invariants
# Each takes (manifests, context) and returns a list of problems (empty: the invariant holds).


def api_probes(m, ctx):
    _, api = api_workload(m)
    problems = []
    want = {"startupProbe": "/healthz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for probe, path in want.items():
        get = api.get(probe, {}).get("httpGet")
        if not get:
            problems.append(f"api has no {probe} over HTTP")
            continue
        if get.get("path") != path:
            problems.append(f"api {probe} path is {get.get('path')}, not {path}")
        if port_number(api, get.get("port")) != API_PORT:
            problems.append(f"api {probe} port {get.get('port')} is not the server's {API_PORT}")
    if [p.get("containerPort") for p in api.get("ports", [])] != [API_PORT]:
        problems.append(f"api container ports are not [{API_PORT}]")
    return problems


def api_grace(m, ctx):
    deployment, api = api_workload(m)
    problems = []
    graceful = env(api, "SUPERVISOR_GRACEFUL_TIMEOUT")
    graceful = int(graceful["value"]) if graceful else ctx["graceful_timeout"]
    pre_stop = pre_stop_seconds(api)
    if pre_stop is None or pre_stop < 1:
        problems.append("api has no preStop sleep (endpoints would still send connections after SIGTERM)")
        pre_stop = 0
    grace = pod_spec(deployment).get("terminationGracePeriodSeconds", 30)
    if grace <= pre_stop + graceful:
        problems.append(f"terminationGracePeriodSeconds {grace} <= preStop {pre_stop} + graceful_timeout {graceful}")
    if deployment["spec"].get("strategy", {}).get("rollingUpdate", {}).get("maxUnavailable") != 0:
        problems.append("api rolling update may take ready pods away before new ones are ready (maxUnavailable != 0)")
    return problems


def edge_grace(m, ctx):
    deployment = m.get("Deployment", "edge")
    nginx = container(deployment, "nginx")
    read_timeout = seconds(m.configmap("edge-env")["data"]["EDGE_PROXY_READ_TIMEOUT"])
    override = env(nginx, "EDGE_PROXY_READ_TIMEOUT")
    if override:
        read_timeout = seconds(override["value"])
    pre_stop = pre_stop_seconds(nginx) or 0
    grace = pod_spec(deployment).get("terminationGracePeriodSeconds", 30)
    if grace <= pre_stop + read_timeout:
        return [f"edge terminationGracePeriodSeconds {grace} <= preStop {pre_stop} + proxy read timeout {read_timeout}"]
    return []


def edge_probes_and_upstream(m, ctx):
    nginx = container(m.get("Deployment", "edge"), "nginx")
    problems = []
    listen = env(nginx, "EDGE_LISTEN")
    listen = int(str(listen["value"]).rsplit(":", 1)[-1]) if listen else None
    for probe in ("readinessProbe", "livenessProbe"):
        get = nginx.get(probe, {}).get("httpGet", {})
        if get.get("path") != "/_edge/healthz" or port_number(nginx, get.get("port")) != listen:
            problems.append(f"edge {probe} is not /_edge/healthz on EDGE_LISTEN's port {listen}")
    upstream = env(nginx, "EDGE_API_UPSTREAM")
    service = m.get("Service", "api")
    want = f"{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    if not upstream or upstream["value"].split()[0] != want:
        problems.append(f"EDGE_API_UPSTREAM is not the api Service ({want})")
    return problems


def non_root(m, ctx):
    problems = []
    for w in m.workloads():
        name = f"{w['kind']}/{w['metadata']['name']}"
        if pod_spec(w).get("securityContext", {}).get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{name}: no RuntimeDefault seccomp profile")
        if pod_spec(w).get("automountServiceAccountToken") is not False:
            problems.append(f"{name}: mounts a service account token it does not use")
    for where, w, c in containers(m):
        pod = pod_spec(w).get("securityContext", {})
        sc = c.get("securityContext", {})
        if not sc.get("runAsNonRoot", pod.get("runAsNonRoot")):
            problems.append(f"{where}: runAsNonRoot is not set")
        if sc.get("runAsUser", pod.get("runAsUser")) in (0, None):
            problems.append(f"{where}: no non-zero runAsUser")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: root file system is not read-only")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            problems.append(f"{where}: capabilities are not all dropped")
    return problems


def pinned_images(m, ctx):
    problems = []
    for where, _, c in containers(m):
        image = c["image"]
        if "@sha256:" in image:
            continue
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        if not tag or tag == "latest":
            problems.append(f"{where}: image {image} is not pinned (tag or digest)")
        for pinned in ctx["compose_images"]:
            if image.split(":")[0] == pinned.split(":")[0] and image != pinned:
                problems.append(f"{where}: {image} differs from compose/prod.yml's {pinned}")
    api = container(m.get("Deployment", "api"), "api")["image"]
    job = container(m.get("Job", "migrate"), "migrate")["image"]
    if api != job:
        problems.append(f"the migration Job runs {job}, the api {api}: the schema would not match the release")
    return problems


def resources(m, ctx):
    problems = []
    for where, _, c in containers(m):
        for kind in ("requests", "limits"):
            for what in ("cpu", "memory"):
                if what not in c.get("resources", {}).get(kind, {}):
                    problems.append(f"{where}: no {kind}.{what}")
    return problems


def workers_and_connections(m, ctx):
    deployment, api = api_workload(m)
    problems = []
    concurrency = env(api, "WEB_CONCURRENCY") or {}
    ref = concurrency.get("valueFrom", {}).get("resourceFieldRef", {})
    if (
        ref.get("resource") != "limits.cpu"
        or ref.get("containerName", "api") != "api"
        or str(ref.get("divisor", "1")) != "1"
    ):
        problems.append("WEB_CONCURRENCY is not the api container's CPU limit (resourceFieldRef limits.cpu, divisor 1)")
    workers = math.ceil(cpus(api["resources"]["limits"]["cpu"]))
    pool = int(env(api, "DATABASE_POOL_SIZE")["value"])
    share = env(api, "DATABASE_MAX_CONNECTIONS")
    if share and workers * pool > int(share["value"]):
        problems.append(f"{workers} workers x pool {pool} exceed the pod's DATABASE_MAX_CONNECTIONS {share['value']}")
    hpa = m.get("HorizontalPodAutoscaler", "api")
    target = hpa["spec"]["scaleTargetRef"]
    if (target["kind"], target["name"]) != ("Deployment", "api"):
        problems.append("the HorizontalPodAutoscaler does not scale the api Deployment")
    if hpa["spec"].get("minReplicas", 1) < 2:
        problems.append("the api may scale down to one pod")
    if "replicas" in deployment["spec"]:
        problems.append("the api Deployment sets replicas, which every apply would reset under the autoscaler")
    surge = deployment["spec"].get("strategy", {}).get("rollingUpdate", {}).get("maxSurge", 1)
    if not isinstance(surge, int):
        problems.append(f"maxSurge {surge!r} is not a number of pods (the connection budget needs one)")
        surge = math.ceil(hpa["spec"]["maxReplicas"] * int(str(surge).rstrip("%")) / 100)
    pods = hpa["spec"]["maxReplicas"] + surge
    args = container(m.get("StatefulSet", "db"), "postgres").get("args", [])
    limit = [int(a.split("=", 1)[1]) for a in args if a.startswith("max_connections=")]
    limit = limit[0] if limit else 100
    need = pods * workers * pool + OTHER_CONNECTIONS
    if need > limit - RESERVED_CONNECTIONS:
        problems.append(
            f"({hpa['spec']['maxReplicas']} + {surge}) pods x {workers} workers x pool {pool} + {OTHER_CONNECTIONS}"
            f" = {need} connections > max_connections {limit} - {RESERVED_CONNECTIONS} reserved"
        )
    return problems


def availability(m, ctx):
    problems = []
    api_labels = m.get("Deployment", "api")["spec"]["template"]["metadata"]["labels"]
    pdb = m.get("PodDisruptionBudget", "api")
    if not selects(pdb["spec"]["selector"], api_labels):
        problems.append("the api PodDisruptionBudget does not select the api pods")
    if pdb["spec"].get("maxUnavailable", 0) < 1 and "minAvailable" not in pdb["spec"]:
        problems.append("the api PodDisruptionBudget allows no disruption (nodes could never drain)")
    service = m.get("Service", "api")
    if service["spec"]["selector"] != {k: api_labels[k] for k in service["spec"]["selector"]}:
        problems.append("the api Service does not select the api pods")
    if port_number(container(m.get("Deployment", "api"), "api"), service["spec"]["ports"][0]["targetPort"]) != API_PORT:
        problems.append("the api Service does not target the server's port")
    return problems


def network_policies(m, ctx):
    problems = []
    policies = m.of_kind("NetworkPolicy")
    labels = {w["metadata"]["name"]: w["spec"]["template"]["metadata"]["labels"] for w in m.workloads()}
    app_pods = {"app.kubernetes.io/name": APP}
    if not any(
        p["spec"]["podSelector"] == {"matchLabels": app_pods} and not p["spec"].get("ingress") for p in policies
    ):
        problems.append("no default-deny ingress policy for the stack's pods")
    allowed = {"api": {"edge", "monitoring"}, "db": {"api", "migrate"}}
    for target, want in allowed.items():
        for p in policies:
            if not selects(p["spec"]["podSelector"], labels[target]) or p["spec"]["podSelector"] == {
                "matchLabels": app_pods
            }:
                continue
            for rule in p["spec"].get("ingress", []):
                if not rule.get("from"):
                    problems.append(f"{p['metadata']['name']}: admits anyone to the {target} pods")
                for peer in rule.get("from", []):
                    if "namespaceSelector" in peer:
                        who = (
                            peer["namespaceSelector"]
                            .get("matchLabels", {})
                            .get("kubernetes.io/metadata.name", "any namespace")
                        )
                    else:
                        who = (
                            peer.get("podSelector", {})
                            .get("matchLabels", {})
                            .get("app.kubernetes.io/component", "any pod")
                        )
                    if who not in want:
                        problems.append(f"{p['metadata']['name']}: admits {who} to the {target} pods")
    return problems


def prometheus(m, ctx):
    deployment = m.get("Deployment", "api")
    template = deployment["spec"]["template"]
    notes = template["metadata"].get("annotations", {})
    want = {"prometheus.io/scrape": "true", "prometheus.io/port": str(API_PORT), "prometheus.io/path": "/metrics"}
    problems = [
        f"api pods: annotation {k} is {notes.get(k)!r}, not {v!r}" for k, v in want.items() if notes.get(k) != v
    ]
    # The shipped scrape job and PodMonitor must keep exactly these pods, on the port named for 8000.
    labels = template["metadata"]["labels"]
    port = next(p["name"] for p in container(deployment, "api")["ports"] if p["containerPort"] == API_PORT)
    namespace = deployment["metadata"].get("namespace")
    for job in ctx["scrape"]["scrape_configs"]:
        if job.get("metrics_path", "/metrics") != "/metrics":
            problems.append(f"scrape job {job['job_name']}: metrics_path is not /metrics")
        names = [n for sd in job["kubernetes_sd_configs"] for n in sd.get("namespaces", {}).get("names", [])]
        if namespace and names and namespace not in names:
            problems.append(f"scrape job {job['job_name']}: namespaces {names} miss {namespace}")
        for rule in job.get("relabel_configs", []):
            if rule.get("action") != "keep":
                continue
            meta = {
                **{f"__meta_kubernetes_pod_label_{re.sub('[^a-zA-Z0-9_]', '_', k)}": v for k, v in labels.items()},
                "__meta_kubernetes_pod_container_port_name": port,
            }
            value = rule.get("separator", ";").join(meta.get(s, "") for s in rule["source_labels"])
            if not re.fullmatch(rule["regex"], value):
                problems.append(
                    f"scrape job {job['job_name']}: keep rule {rule['regex']!r} drops the api pods ({value!r})"
                )
    monitor = ctx["podmonitor"]["spec"]
    if not selects(monitor["selector"], labels) or [e["port"] for e in monitor["podMetricsEndpoints"]] != [port]:
        problems.append("the PodMonitor does not select the api pods' metrics port")
    return problems


# The keys of the db-credentials Secret: one password per database role (conf/postgres/roles.sh).
PASSWORD_KEYS = ("owner-password", "app-password")


def mounted_passwords(w, c):
    """{file path: Secret key} of the db-credentials passwords mounted in container c of workload w."""
    mounted = {}
    for mount in c.get("volumeMounts", []):
        volume = next((v for v in pod_spec(w).get("volumes", []) if v["name"] == mount["name"]), {})
        secret = volume.get("secret")
        if secret and secret["secretName"] == "db-credentials":
            for i in secret.get("items", []):
                mounted[f"{mount['mountPath']}/{i['path']}"] = i["key"]
    return mounted


def secrets(m, ctx):
    problems = []
    for where, w, c in containers(m):
        mounted = mounted_passwords(w, c)
        for var in ("DATABASE_PASSWORD_FILE", "POSTGRES_PASSWORD_FILE", "DB_OWNER_PASSWORD_FILE", "DB_APP_PASSWORD_FILE"):
            e = env(c, var)
            if e and mounted.get(e["value"]) not in PASSWORD_KEYS:
                problems.append(f"{where}: {var} is not a mounted db-credentials password")
        for e in c.get("env", []):
            if re.search(r"PASSWORD(?!_FILE)|SECRET|TOKEN", e["name"]) and "value" in e:
                problems.append(f"{where}: {e['name']} is a literal in the manifest")
    return problems


def url_user(c):
    """The user of a key=value DATABASE_URL."""
    url = env(c, "DATABASE_URL")
    found = re.search(r"(?:^|\s)user=(\S+)", url["value"]) if url else None
    return found.group(1) if found else None


def database_roles(m, ctx):
    """Two roles, as in Compose: the api connects as the app role with its password and never holds the owner's;
    the migration Job connects as the owner; the database runs conf/postgres/roles.sh with both passwords."""
    problems = []
    db = m.get("StatefulSet", "db")
    postgres = container(db, "postgres")
    owner = (env(postgres, "DB_OWNER_USER") or {}).get("value")
    app = (env(postgres, "DB_APP_USER") or {}).get("value")
    if (owner, app) != (ctx["compose_roles"]["owner"], ctx["compose_roles"]["app"]):
        problems.append(f"database roles (owner {owner}, app {app}) differ from compose/prod.yml's {ctx['compose_roles']}")
    if (env(postgres, "POSTGRES_USER") or {}).get("value") in (owner, app):
        problems.append("the database's superuser is one of the application's roles")
    want = {"DB_OWNER_PASSWORD_FILE": "owner-password", "DB_APP_PASSWORD_FILE": "app-password"}
    mounted = mounted_passwords(db, postgres)
    for var, key in want.items():
        if mounted.get((env(postgres, var) or {}).get("value")) != key:
            problems.append(f"db: {var} is not the mounted {key}")
    init = [
        v
        for v in pod_spec(db).get("volumes", [])
        for mount in postgres.get("volumeMounts", [])
        if mount["name"] == v["name"] and mount["mountPath"] == "/docker-entrypoint-initdb.d" and "configMap" in v
    ]
    script = [m.configmap(v["configMap"]["name"].rsplit("-", 1)[0]) for v in init]
    if not script or ctx["roles_script"] not in script[0]["data"].values():
        problems.append("db: /docker-entrypoint-initdb.d does not hold conf/postgres/roles.sh")
    for kind, name, cname, role, key in (
        ("Deployment", "api", "api", app, "app-password"),
        ("Job", "migrate", "migrate", owner, "owner-password"),
    ):
        w = m.get(kind, name)
        c = container(w, cname)
        if url_user(c) != role:
            problems.append(f"{name} connects as {url_user(c)}, not {role}")
        passwords = mounted_passwords(w, c)
        if passwords.get((env(c, "DATABASE_PASSWORD_FILE") or {}).get("value")) != key:
            problems.append(f"{name}: DATABASE_PASSWORD_FILE is not the mounted {key}")
        if set(passwords.values()) - {key}:
            problems.append(f"{name} mounts another role's password ({sorted(set(passwords.values()) - {key})})")
    return problems


INVARIANTS = [
    ("api probes: startup and liveness /healthz, readiness /readyz, on port 8000", api_probes),
    ("api grace: terminationGracePeriodSeconds > preStop + graceful_timeout; maxUnavailable 0", api_grace),
    ("edge grace: terminationGracePeriodSeconds > preStop + proxy read timeout", edge_grace),
    ("edge probes on /_edge/healthz, upstream = the api Service", edge_probes_and_upstream),
    ("every pod non-root, read-only, no capabilities, RuntimeDefault seccomp, no token", non_root),
    ("every image pinned (as compose/prod.yml); the Job runs the api's image", pinned_images),
    ("every container has cpu and memory requests and limits", resources),
    ("WEB_CONCURRENCY = CPU limit; pods x workers x pool fits max_connections", workers_and_connections),
    ("api Service, PodDisruptionBudget and autoscaler select and target the api", availability),
    ("NetworkPolicy: default deny; edge -> api (+ monitoring); api, migrate -> db", network_policies),
    ("Prometheus: annotations, the scrape job and the PodMonitor select the api pods", prometheus),
    ("passwords only from the db-credentials Secret, as files", secrets),
    ("database roles: the api as the app role, the Job as the owner, roles.sh on the database", database_roles),
]


def run(m, ctx):
    problems = {}
    for title, invariant in INVARIANTS:
        try:
            problems[title] = invariant(m, ctx)
        except (KeyError, TypeError, ValueError) as e:
            problems[title] = [f"cannot check: {e!r}"]
    return problems


# -------------------------------------------------------------------------------------------------- mutations
# Edits a later change could make by mistake, each with the invariant that must catch it (with a problem it
# names, not a "cannot check").


def _api(m):
    return container(m.get("Deployment", "api"), "api")


def _set_env(c, name, value):
    c["env"] = [e for e in c.get("env", []) if e["name"] != name] + [{"name": name, "value": value}]


def _api_grace_at_the_limit(m):
    # Exactly preStop + graceful_timeout, the longest grace period that is still too short: a check that forgot
    # the preStop sleep, or compared with < instead of <=, lets it through.
    api = _api(m)
    limit = pre_stop_seconds(api) + int(env(api, "SUPERVISOR_GRACEFUL_TIMEOUT")["value"])
    pod_spec(m.get("Deployment", "api")).update(terminationGracePeriodSeconds=limit)


MUTATIONS = [
    ("api grace period not above preStop + graceful_timeout", api_grace, _api_grace_at_the_limit),
    (
        "graceful_timeout raised above the grace period",
        api_grace,
        lambda m: _set_env(_api(m), "SUPERVISOR_GRACEFUL_TIMEOUT", "60"),
    ),
    ("api preStop removed", api_grace, lambda m: _api(m).pop("lifecycle")),
    (
        "api rollout may drop a ready pod first",
        api_grace,
        lambda m: m.get("Deployment", "api")["spec"]["strategy"]["rollingUpdate"].update(maxUnavailable=1),
    ),
    (
        "edge grace period below the proxy read timeout",
        edge_grace,
        lambda m: pod_spec(m.get("Deployment", "edge")).update(terminationGracePeriodSeconds=30),
    ),
    ("readiness probe on /healthz", api_probes, lambda m: _api(m)["readinessProbe"]["httpGet"].update(path="/healthz")),
    ("liveness probe on another port", api_probes, lambda m: _api(m)["livenessProbe"]["httpGet"].update(port=9000)),
    (
        "edge upstream is not the api Service",
        edge_probes_and_upstream,
        lambda m: _set_env(container(m.get("Deployment", "edge"), "nginx"), "EDGE_API_UPSTREAM", "backend:8000"),
    ),
    (
        "api runs as root",
        non_root,
        lambda m: pod_spec(m.get("Deployment", "api"))["securityContext"].update(runAsUser=0),
    ),
    (
        "edge root file system writable",
        non_root,
        lambda m: container(m.get("Deployment", "edge"), "nginx")["securityContext"].update(
            readOnlyRootFilesystem=False
        ),
    ),
    (
        "edge image :latest",
        pinned_images,
        lambda m: container(m.get("Deployment", "edge"), "nginx").update(image="nginx:latest"),
    ),
    (
        "postgres image differs from Compose",
        pinned_images,
        lambda m: container(m.get("StatefulSet", "db"), "postgres").update(image="postgres:17.0"),
    ),
    (
        "migration Job on another release",
        pinned_images,
        lambda m: container(m.get("Job", "migrate"), "migrate").update(image="prefork-api:0.0.9"),
    ),
    (
        "db container without resources",
        resources,
        lambda m: container(m.get("StatefulSet", "db"), "postgres").pop("resources"),
    ),
    ("WEB_CONCURRENCY as a literal", workers_and_connections, lambda m: _set_env(_api(m), "WEB_CONCURRENCY", "8")),
    (
        "autoscaler beyond the connection budget",
        workers_and_connections,
        lambda m: m.get("HorizontalPodAutoscaler", "api")["spec"].update(maxReplicas=50),
    ),
    (
        "api admits every pod",
        network_policies,
        lambda m: m.get("NetworkPolicy", "api-from-edge-and-prometheus")["spec"]["ingress"][0].pop("from"),
    ),
    (
        "Prometheus told another port",
        prometheus,
        lambda m: m.get("Deployment", "api")["spec"]["template"]["metadata"]["annotations"].update(
            {"prometheus.io/port": "9090"}
        ),
    ),
    ("api port renamed under the scrape job", prometheus, lambda m: _api(m)["ports"][0].update(name="web")),
    (
        "api pods relabelled away from the scrape job",
        prometheus,
        lambda m: m.get("Deployment", "api")["spec"]["template"]["metadata"]["labels"].update(
            {"app.kubernetes.io/component": "backend"}
        ),
    ),
    ("database password as a literal", secrets, lambda m: _set_env(_api(m), "DATABASE_PASSWORD", "hunter2")),
    (
        "api connects as the owner",
        database_roles,
        lambda m: _set_env(_api(m), "DATABASE_URL", "host=db port=5432 user=app dbname=app"),
    ),
    (
        "api given the owner's password",
        database_roles,
        lambda m: next(v for v in pod_spec(m.get("Deployment", "api"))["volumes"] if v["name"] == "db-credentials")[
            "secret"
        ]["items"].append({"key": "owner-password", "path": "db_owner_password"}),
    ),
    (
        "database without the roles script",
        database_roles,
        lambda m: container(m.get("StatefulSet", "db"), "postgres")["volumeMounts"].pop(),
    ),
]


def main(argv):
    if len(argv) not in (3, 4) or (len(argv) == 4 and argv[3] != "--mutations"):
        sys.exit(__doc__)
    root, rendered = Path(argv[1]), argv[2]
    docs = list(yaml.safe_load_all(Path(rendered).read_text()))
    compose = yaml.safe_load((root / "compose/prod.yml").read_text())
    prometheus_dir = root / "deploy/kubernetes/prometheus"
    ctx = {
        "graceful_timeout": tomllib.loads((root / "conf/supervisor.toml").read_text())["graceful_timeout"],
        "scrape": yaml.safe_load((prometheus_dir / "scrape-config.yml").read_text()),
        "podmonitor": yaml.safe_load((prometheus_dir / "podmonitor.yaml").read_text()),
        "compose_images": sorted(
            {s["image"] for s in compose["services"].values() if "${" not in s.get("image", "${")}
        ),
        # The roles' names: the defaults of compose/prod.yml's ${DB_OWNER_USER:-app} and ${DB_APP_USER:-app_api}.
        "compose_roles": {
            role: re.fullmatch(r"\$\{\w+:-(\w+)\}", compose["services"]["db"]["environment"][var]).group(1)
            for role, var in (("owner", "DB_OWNER_USER"), ("app", "DB_APP_USER"))
        },
        "roles_script": (root / "conf/postgres/roles.sh").read_text(),
    }
    passed = failed = 0
    if len(argv) == 3:
        for title, problems in run(Manifests(docs), ctx).items():
            if problems:
                failed += 1
                print(f"FAIL: {title}")
                for p in problems:
                    print(f"    {p}")
            else:
                passed += 1
                print(f"PASS: {title}")
    else:
        titles = {invariant: title for title, invariant in INVARIANTS}
        if any(run(Manifests(docs), ctx).values()):
            sys.exit("the unmodified manifests already fail an invariant: fix that first")
        for title, invariant, mutate in MUTATIONS:
            m = Manifests(copy.deepcopy(docs))
            mutate(m)
            problems = run(m, ctx)[titles[invariant]]
            if problems and not any(p.startswith("cannot check") for p in problems):
                passed += 1
                print(f"PASS: caught: {title}: {problems[0]}")
            else:
                failed += 1
                print(f"FAIL: not caught: {title} ({problems or 'no problem reported'})")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
