"""The local stack: localcluster, an MLflow server and Airflow 3, on one machine.

``make demo`` and the end-to-end tests start the stack through this one module, so the demo
and the tests run the same orchestration. Each component runs in its own process group with
its state under one folder (``.demo/`` for the demo); ``stack.json`` there records the ports
and PIDs, so ``make down`` from another shell stops exactly what was started, and a second
``make demo`` finds the running stack and reuses it.

What the stack sets up inside the cluster is what a platform team applies on a real one:
the namespace, service accounts and RBAC from ``deploy/`` (kubectl apply), the MLflow Secret,
the settings ConfigMap. Airflow gets its connections from ``AIRFLOW_CONN_*`` variables and
its pools from ``airflow pools set``.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

from tools import prometheus
from tools.kubeaccess import Access
from tools.procs import (
    Server,
    alive,
    free_port,
    group_alive,
    port_taken,
    stop_group,
    stop_left_behind,
)

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
NAMESPACE = "ml"
# The models fed by a packaged dataset (helmsman-step sample-data): the stack writes their
# daily files once and points their sources there.
FILE_FED = ("diabetes", "wine")
ADMIN_USER = "admin"
# MLflow runs its basic-auth app: ADMIN_USER is the person's account (the UI); the pipeline's
# pods and Airflow's tasks sign in as this account, through the MLflow Secret and connection.
MLFLOW_PIPELINE_USER = "helmsman"
# The serving pods' account (the helmsman-mlflow-serving Secret): it reads models and may change
# none it did not make (MLflow grants nothing beyond its READ default to it).
MLFLOW_SERVING_USER = "helmsman-serving"
MLFLOW_USERS = (ADMIN_USER, MLFLOW_PIPELINE_USER, MLFLOW_SERVING_USER)
GATEWAY = "helmsman-gateway"  # deploy/serving-gateway.yaml
# The service accounts the Airflow chart runs workers and the triggerer as, in the chart's
# namespace; deploy/rbac.yaml binds its Role in ml to them (helm-values/airflow.yaml names them).
AIRFLOW_IDENTITIES = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "airflow"}},
    *({"apiVersion": "v1", "kind": "ServiceAccount",
       "metadata": {"name": name, "namespace": "airflow"}}
      for name in ("airflow-worker", "airflow-triggerer")),
]  # fmt: skip
# Prometheus' own identity (not the admin's): its discovery of the serving pods and nothing
# else. On a cluster its kubernetes_sd needs get/list/watch on pods; localcluster serves the
# same targets at one non-resource URL, which this ClusterRole allows alone.
PROMETHEUS_IDENTITY = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "monitoring"}},
    {"apiVersion": "v1", "kind": "ServiceAccount",
     "metadata": {"name": "prometheus", "namespace": "monitoring"}},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
     "metadata": {"name": "helmsman-prometheus-discovery"},
     "rules": [{"nonResourceURLs": [prometheus.SD_PATH], "verbs": ["get"]}]},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
     "metadata": {"name": "helmsman-prometheus-discovery"},
     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                 "name": "helmsman-prometheus-discovery"},
     "subjects": [{"kind": "ServiceAccount", "name": "prometheus", "namespace": "monitoring"}]},
]  # fmt: skip
# A stack lives for days; a token's life is bounded by the cluster process's anyway.
TOKEN_HOURS = 24 * 30
# Pools the DAGs use, as a platform team imports them (helm-values/airflow.yaml does the same).
POOLS_FILE = REPO / "helm-values" / "airflow-pools.json"
# The LocalExecutor forks this many workers at start (the default 32). Two: a run's task and a
# backfill's, or a task and the rollout's resumed try; also what bounds backfill runs side by
# side here (the gpu_backfill pool does on a cluster).
PARALLELISM = 2


# The preview's probe-load p99 on this stack (a cluster's default is 250 ms): every request
# crosses localcluster's userspace proxy, and the pods share two cores with Airflow, MLflow
# and the API emulator, where one request in a hundred can wait 300 ms for a core. A serving
# build that is really slow (tests/faulty_serve.py's `slow`, 2 s) is still caught.
LOCAL_PROBE_P99_MS = 1000.0

BACKFILL_POOL = "gpu_backfill"  # helmsman.policies.BACKFILL_GPU_POOL (tests check they agree)


def pool_slots(name: str) -> int:
    """Slots of the pool ``name`` as the stack (and the chart) imports them."""
    return int(json.loads(POOLS_FILE.read_text())[name]["slots"])


def backfill_runs_at_once() -> int:
    """How many runs of a backfill go at once on the stack. Backfill runs never deploy, so they
    need not wait for each other: as many as the backfill pool has slots and the executor has
    workers."""
    return min(pool_slots(BACKFILL_POOL), PARALLELISM)


LOCAL_SETTINGS = "from helmsman.policies import task_instance_mutation_hook  # noqa: F401\n"
COMPONENTS = (
    "localcluster", "pushgateway", "prometheus", "mlflow", "api-server", "scheduler",
    "dag-processor", "triggerer",
)  # fmt: skip
AIRFLOW_COMPONENTS = COMPONENTS[4:]


def inherited_env() -> dict[str, str]:
    """This process's environment without Airflow's and MLflow's settings: the stack sets its
    own, and a caller's (a test session's MLflow server, say) must not leak into it."""
    prefixes = ("AIRFLOW_", "AIRFLOW__", "MLFLOW_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file only its owner reads (made so before anything is in it)."""
    path.touch(mode=0o600)
    os.chmod(path, 0o600)
    path.write_text(text)


class StackError(Exception):
    """A component did not start; the message says which, why, and which log to read."""


def airflow_db_template() -> Path:
    """An Airflow database migrated to this venv's Airflow, with the pools imported.

    Migrating a fresh SQLite database and importing the pools takes two Airflow CLI starts
    (~8 s, on the critical path of every fresh stack). Nothing in the result depends on the
    stack (no ports, no secrets, no paths: the log templates, the pools and an audit line), so
    one copy per Airflow version and pools file serves every stack; it lives in the venv, and
    `make setup` builds it. Built under a temporary name and renamed: concurrent builders race
    harmlessly.
    """
    key = hashlib.sha256(POOLS_FILE.read_bytes()).hexdigest()[:12]
    folder = BIN.parent / "share" / "helmsman"
    template = folder / f"airflow-{version('apache-airflow')}-{key}.db"
    if template.exists():
        return template
    folder.mkdir(parents=True, exist_ok=True)
    building = folder / f".{template.name}.{os.getpid()}"
    home = folder / f".home.{os.getpid()}"
    home.mkdir(exist_ok=True)
    env = {
        **inherited_env(),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{building}",
    }
    try:
        _run([str(BIN / "airflow"), "db", "migrate"], "airflow db migrate", env=env, timeout=300)
        _run([str(BIN / "airflow"), "pools", "import", str(POOLS_FILE)], "airflow pools import",
             env=env)  # fmt: skip
        building.rename(template)
    finally:
        building.unlink(missing_ok=True)
        shutil.rmtree(home, ignore_errors=True)
    return template


def _run(
    cmd: list[str],
    what: str,
    *,
    env: dict[str, str] | None = None,
    input_text: str | None = None,
    timeout: float = 120,
) -> str:
    proc = subprocess.run(
        cmd, input=input_text, env=env, capture_output=True, text=True, timeout=timeout,
        check=False,
    )  # fmt: skip
    if proc.returncode:
        raise StackError(f"{what} failed:\n{proc.stderr.strip()[-2000:]}")
    return proc.stdout


@dataclass
class Ports:
    cluster: int = 6443
    mlflow: int = 5000
    airflow: int = 8080
    prometheus: int = 9090
    pushgateway: int = 9091

    @classmethod
    def free(cls) -> Ports:
        return cls(free_port(), free_port(), free_port(), free_port(), free_port())


@dataclass
class Settings:
    """What the pipeline's pods read from the settings ConfigMap."""

    rows_per_day: int = 20000
    seed: int = 7
    extra_images: list[dict[str, Any]] = field(default_factory=list)
    # Airflow's triggerer runs deferred tasks' waits. The DAGs defer nothing unless the
    # platform's deferrable switch is on (plugins/helmsman/pods.py), so the stack leaves it out
    # by default: a quarter GiB and a few seconds of start-up for nothing otherwise.
    triggerer: bool = False
    # The DAGs' crons (HELMSMAN_CRON, helmsman.schedules): off for a test stack, whose
    # scenarios must not meet a cron slot; asset events and triggers run either way.
    crons: bool = True
    # Seconds before a failed task's first retry (Airflow's [core] default_task_retry_delay),
    # as helm-values/airflow.yaml sets it; a test stack waits less for its fault scenarios.
    retry_delay_s: int = 60


@dataclass
class Stack:
    root: Path  # made absolute: Airflow's SQLite URL and the kubeconfig need absolute paths
    ports: Ports = field(default_factory=Ports)
    settings: Settings = field(default_factory=Settings)
    pids: dict[str, int] = field(default_factory=dict)
    # Every process group the stack started (a component's PID leads its group), also of
    # components since restarted: `down` ends those too.
    groups: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = self.root.resolve()

    # -- where things are ---------------------------------------------------------------------

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.airflow}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.mlflow}"

    @property
    def pushgateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.pushgateway}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.prometheus}"

    @property
    def cluster_url(self) -> str:
        return f"https://127.0.0.1:{self.ports.cluster}"

    def gateway_url(self) -> str | None:
        """Where users reach the served models: the Gateway's address (None: not yet)."""
        out = self.kubectl(
            "-n", NAMESPACE, "get", "gateway", GATEWAY, "-o",
            "jsonpath={.status.addresses[0].value}",
        )  # fmt: skip
        return f"http://{out.strip()}" if out.strip() else None

    def model_url(self, model: str) -> str | None:
        """Where users reach one model: its route's path on the Gateway (the plugin's
        ``contract.route_path``; tests/tools/test_demo.py holds the two together)."""
        url = self.gateway_url()
        return f"{url}/models/{model}" if url else None

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def airflow_kubeconfig(self) -> Path:
        """What Airflow's workers and triggerer reach the cluster as: the ``airflow-worker``
        service account, allowed what deploy/rbac.yaml's Role allows and nothing else."""
        return self.root / "airflow" / "kubeconfig"

    @property
    def prometheus_kubeconfig(self) -> Path:
        """What Prometheus discovers the serving pods as: the ``prometheus`` service account."""
        return self.root / "prometheus" / "kubeconfig"

    @property
    def audit_log(self) -> Path:
        return self.root / "logs" / "cluster-audit.jsonl"

    @property
    def state_file(self) -> Path:
        return self.root / "stack.json"

    def log(self, component: str) -> Path:
        return self.root / "logs" / f"{component}.log"

    @property
    def password(self) -> str:
        data: dict[str, str] = json.loads((self.root / "airflow" / "passwords.json").read_text())
        return data[ADMIN_USER]

    @property
    def mlflow_credentials_file(self) -> Path:
        """MLflow's accounts and their passwords (user -> password), readable by its owner only."""
        return self.root / "mlflow-auth" / "credentials.json"

    def mlflow_env(self, user: str = ADMIN_USER) -> dict[str, str]:
        """The variables an MLflow client reads to reach this stack's server as ``user``."""
        passwords: dict[str, str] = json.loads(self.mlflow_credentials_file.read_text())
        return {
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "MLFLOW_TRACKING_USERNAME": user,
            "MLFLOW_TRACKING_PASSWORD": passwords[user],
        }

    def mlflow_client(self) -> Any:
        """An MLflow client signed in as the admin. MLflow reads credentials from the process's
        environment at each request, never from a client, so this puts the admin's there, for
        the rest of the process (a test that must not keep them patches them instead). The
        server's address goes to this client alone: a process-wide one would redirect every
        other client in the process to this stack, and keep doing so after it stops."""
        from mlflow import MlflowClient

        env = self.mlflow_env()
        del env["MLFLOW_TRACKING_URI"]
        os.environ.update(env)
        return MlflowClient(tracking_uri=self.mlflow_url)

    # -- state on disk ------------------------------------------------------------------------

    def save(self) -> None:
        data = {"ports": asdict(self.ports), "pids": self.pids, "groups": self.groups}
        self.state_file.write_text(json.dumps(data, indent=2))

    @classmethod
    def load(cls, root: Path) -> Stack | None:
        path = root / "stack.json"
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        return cls(
            root, Ports(**data["ports"]), pids=data.get("pids", {}),
            groups=data.get("groups", []),
        )  # fmt: skip

    def running(self) -> list[str]:
        return [name for name, pid in self.pids.items() if alive(pid)]

    # -- environments -------------------------------------------------------------------------

    def airflow_env(self) -> dict[str, str]:
        home = self.root / "airflow"
        secret = (home / "secret").read_text().strip()
        kube = {
            "conn_type": "kubernetes",
            "extra": {"kube_config_path": str(self.airflow_kubeconfig), "in_cluster": False},
        }
        env = {
            **inherited_env(),
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(PARALLELISM),
            # One api-server process, one DAG parser at a time: a handful of DAG files.
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            # Airflow puts SQLite in WAL mode (readers and the writer do not block each other);
            # writers still take turns, and sqlite3's default wait for a turn is 5 s. A writer
            # here waits up to 30 s, as a PostgreSQL client waits for a row lock.
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}?timeout=30",
            # A task's supervisor sleeps up to this long between looks at its task process; when
            # the process's sockets close just before it can be reaped, the supervisor notices
            # the exit only after a whole interval, holding an executor slot (and the task's
            # end) that long: 5 s after one task in seven with two backfill runs at once here,
            # each stalling the other run. 1 s bounds that at the cost of a heartbeat a second
            # per running task.
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.airflow_url}/execution/",
            "AIRFLOW__API__BASE_URL": self.airflow_url,
            "AIRFLOW__API__PORT": str(self.ports.airflow),
            "AIRFLOW__API_AUTH__JWT_SECRET": secret,
            "AIRFLOW__API__SECRET_KEY": secret,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
            "HELMSMAN_ROLLOUT_CHECKS": json.dumps({"max_probe_p99_ms": LOCAL_PROBE_P99_MS}),
            # The scheduler creates the runs of crons and of asset events (a monitoring breach
            # starts training) as in production; a DAG unpaused here waits for its next cron
            # slot rather than firing the one it missed (helmsman.schedules).
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "True",
            "HELMSMAN_CRON": "on" if self.settings.crons else "off",
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "600",
            "AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY": str(self.settings.retry_delay_s),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            "AIRFLOW_CONN_KUBERNETES_DEFAULT": json.dumps(kube),
            # helmsman.models.configure hands the login to MLflow's own variables.
            "AIRFLOW_CONN_MLFLOW_DEFAULT": json.dumps(
                {
                    "conn_type": "http",
                    "host": "127.0.0.1",
                    "port": self.ports.mlflow,
                    "login": MLFLOW_PIPELINE_USER,
                    "password": self.mlflow_env(MLFLOW_PIPELINE_USER)["MLFLOW_TRACKING_PASSWORD"],
                }
            ),
            # The rollout judges each step on what this Prometheus scraped from the pods.
            "AIRFLOW_CONN_PROMETHEUS_DEFAULT": json.dumps(
                {"conn_type": "http", "host": "127.0.0.1", "port": self.ports.prometheus}
            ),
            # The plugin's registry helpers use the step package (installed in the Airflow
            # image; here, from the source tree).
            "PYTHONPATH": os.pathsep.join(
                [str(REPO / "images" / "steps" / "src"), str(REPO / "plugins")]
            ),
            "NO_PROXY": "*",
        }
        return env

    # -- lifecycle ----------------------------------------------------------------------------

    def up(self, say: Any = print) -> None:
        """Start every component that is not running, set up what the DAGs need, wait.

        Components that do not need each other start together: localcluster, MLflow and
        Airflow's components at once (Airflow's database is a copy of a migrated template);
        Prometheus once the cluster it discovers pods from answers. Each is waited on through
        its health endpoint, never a sleep. When a component fails to start, the ones this call
        started are stopped again (nothing half-started is left behind) before the error.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(exist_ok=True)
        self._prepare_files()
        if not self.pids or not self.running():
            self._check_ports()
            self.pids = {}
        running = set(self.running())
        # A component that died may have left processes running (a killed scheduler's
        # workers and their tasks): stop them before a new one starts, so no old try works
        # beside a new one. They are still in the dead component's session.
        live = {self.pids[name] for name in running}
        dead = [pid for pid in self.groups if pid not in live and not alive(pid)]
        left = stop_left_behind(dead) if dead else 0
        if left:
            say(f"stopped {left} process(es) that dead components left behind")
        try:
            self._start(running, say)
        except BaseException:
            for name in reversed(COMPONENTS):
                if name not in running and name in self.pids:
                    stop_group(self.pids.pop(name), grace=10)
            self.save()
            raise

    def _start(self, running: set[str], say: Any) -> None:
        waits: list[Server] = []
        if "localcluster" not in running:
            say("starting localcluster (the Kubernetes API, pods as processes)")
            health = f"{self.cluster_url}/readyz"
            cluster = self._launch("localcluster", self._localcluster_cmd(), health,
                                   {"PYTHONPATH": str(REPO)})  # fmt: skip
            cluster.ca_file = self.root / "cluster" / "pki" / "ca.crt"
        if "mlflow" not in running:
            say("starting MLflow (SQLite backend, local artifacts, basic auth)")
            auth = self.root / "mlflow-auth"
            env = {
                # No job runner: its seven consumer processes serve MLflow's server-side GenAI
                # jobs and periodic trace tasks, which tracking and the registry never use.
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                "MLFLOW_AUTH_CONFIG_PATH": str(auth / "auth.ini"),
                # The UI's session and CSRF tokens: stable across restarts.
                "MLFLOW_FLASK_SERVER_SECRET_KEY": (auth / "secret").read_text().strip(),
                # The admin's account, made by MLflow on its first start (ignored after).
                "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN_USER,
                "MLFLOW_AUTH_ADMIN_PASSWORD": self.mlflow_env()["MLFLOW_TRACKING_PASSWORD"],
            }
            mlflow = self._launch("mlflow", self._mlflow_cmd(), f"{self.mlflow_url}/health", env)
            waits.append(mlflow)
        wanted = [c for c in AIRFLOW_COMPONENTS if c != "triggerer" or self.settings.triggerer]
        airflow = [c for c in wanted if c not in running]
        if airflow:
            # The database from a migrated template (no migration on a fresh start), then
            # Airflow's components at once: none of them needs the cluster to start.
            self._airflow_init()
            say(f"starting Airflow ({', '.join(airflow)})")
            for component in airflow:
                self._launch(component, self._airflow_cmd(component), "", self.airflow_env())
        if "localcluster" not in running:
            self._ready(cluster)
            self._setup_cluster()
        if "pushgateway" not in running:
            try:
                gateway = prometheus.pushgateway_server(self.root / "prometheus",
                                                        self.ports.pushgateway)  # fmt: skip
            except RuntimeError as exc:
                raise StackError(str(exc)) from None
            waits.append(self._launch("pushgateway", gateway.cmd, gateway.health_url))
        if "prometheus" not in running:
            say("starting Prometheus (scrapes the serving pods for the rollout's analysis, "
                "and the monitor's gauges on the Pushgateway)")  # fmt: skip
            try:
                server = prometheus.server(
                    self.root / "prometheus", self.ports.prometheus, NAMESPACE,
                    self.prometheus_kubeconfig, f"127.0.0.1:{self.ports.pushgateway}",
                )  # fmt: skip
            except RuntimeError as exc:
                raise StackError(str(exc)) from None
            waits.append(self._launch("prometheus", server.cmd, server.health_url))
        for server in waits:
            self._ready(server)
        # On every start, not only MLflow's or the cluster's: a stack already running from
        # before an account or its Secret existed gets them (both are idempotent).
        self._mlflow_accounts()
        self._apply_mlflow_secrets()
        self.save()
        if airflow:
            self._wait_airflow_healthy()

    def down(self) -> list[str]:
        """Stop every process this stack started; return the names stopped.

        Each component's process group is ended (SIGTERM, then SIGKILL after the grace
        period), and so is every group the stack ever started, so that processes whose parent
        died -- LocalExecutor workers of a scheduler that was killed and restarted -- go too.
        """
        stopped = []
        # Airflow first (it may be talking to the cluster), the cluster last (it ends pods).
        for name in reversed(COMPONENTS):
            pid = self.pids.get(name)
            if pid and alive(pid):
                stop_group(pid, grace=20 if name == "localcluster" else 10)
                stopped.append(name)
        orphans = 0
        for group in self.groups:
            if group_alive(group):
                orphans += 1
                stop_group(group, grace=5)
        if orphans:
            stopped.append(f"{orphans} orphaned process group(s)")
        self.pids, self.groups = {}, []
        if self.state_file.exists():
            self.save()
        return stopped

    # -- pieces -------------------------------------------------------------------------------

    def raw_uri(self, model: str) -> str:
        """Where this stack keeps a file-fed model's daily raw files (its settings point the
        model's source there)."""
        return (self.root / "raw" / model).as_uri()

    def _raw_files(self) -> None:
        """The feeds of the models on packaged datasets: daily files, written once."""
        for model in FILE_FED:
            folder = self.root / "raw" / model
            if folder.is_dir() and any(folder.glob("*.csv")):
                continue
            cmd = [str(BIN / "python"), "-m", "helmsman_steps", "sample-data", model,
                   "--dest", str(folder)]  # fmt: skip
            env = {**os.environ, "PYTHONPATH": str(REPO / "images" / "steps" / "src")}
            _run(cmd, f"writing the {model} sample's daily files", env=env)

    def _prepare_files(self) -> None:
        home = self.root / "airflow"
        home.mkdir(parents=True, exist_ok=True)
        if not (home / "secret").exists():
            (home / "secret").write_text(secrets.token_urlsafe(32))
        if not (home / "passwords.json").exists():
            password = secrets.token_urlsafe(12)
            (home / "passwords.json").write_text(json.dumps({ADMIN_USER: password}))
        (self.root / "datasets").mkdir(exist_ok=True)
        self._mlflow_auth()
        self._raw_files()
        # Airflow imports airflow_local_settings from $AIRFLOW_HOME/config: the cluster policy.
        (home / "config").mkdir(exist_ok=True)
        (home / "config" / "airflow_local_settings.py").write_text(LOCAL_SETTINGS)
        config = {
            "nodes": [
                {"name": "cpu-1", "labels": {"pool": "cpu"},
                 "capacity": {"cpu": "16", "memory": "32Gi"}},
                # An emulated GPU node: the scheduler sees nvidia.com/gpu, taints and labels
                # as on a real GPU node; the pods on it run on this machine's CPU.
                {"name": "gpu-emulated-1",
                 "labels": {"pool": "gpu", "nvidia.com/gpu.present": "true"},
                 "taints": [{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}],
                 "capacity": {"cpu": "16", "memory": "32Gi", "nvidia.com/gpu": "8"}},
            ],
            "images": self.settings.extra_images,
            "restartBackoffSeconds": 2,
        }  # fmt: skip
        (self.root / "cluster.yaml").write_text(yaml.safe_dump(config))

    def _check_ports(self) -> None:
        for name, port in asdict(self.ports).items():
            if port_taken(port):
                raise StackError(
                    f"port {port} (for {name}) is taken by another program; stop it, or run "
                    f"`make down` if it is an earlier demo (ss -ltnp 'sport = :{port}' shows who)"
                )

    def _launch(
        self, name: str, cmd: list[str], health: str, env: dict[str, str] | None = None
    ) -> Server:
        """Start a component in its own process group, recorded at once; do not wait."""
        # glibc gives each thread that allocates its own arena (up to 8 per core), and each
        # keeps what it freed: the threaded servers here (Airflow's api-server, MLflow's worker
        # thread pool) hold tens of MB that way. Two arenas are plenty for this load.
        tuned = {"MALLOC_ARENA_MAX": "2"}
        server = Server(name, cmd, health, self.log(name),
                        {**inherited_env(), **tuned, **(env or {})})  # fmt: skip
        server.start_background()
        assert server.proc is not None  # noqa: S101 - start_background sets it
        self.pids[name] = server.proc.pid
        self.groups = sorted({*self.groups, server.proc.pid})
        self.save()
        return server

    def _ready(self, server: Server, timeout: float = 180) -> None:
        try:
            server.wait_ready(timeout)
        except (RuntimeError, TimeoutError) as exc:
            raise StackError(
                f"{server.name} did not start: {str(exc).splitlines()[0]}\n"
                f"read its log: {self.log(server.name)}"
            ) from None

    def _airflow_cmd(self, component: str) -> list[str]:
        cmd = [str(BIN / "airflow"), component]
        if component == "api-server":
            # Bound to loopback only: pods serve on 127.x.y.z addresses with the same ports,
            # which a wildcard bind would take from them.
            cmd += ["--host", "127.0.0.1"]
        if component in ("scheduler", "triggerer"):
            # One machine, one log folder: the api-server reads task logs from the files, so
            # the log-serving subprocess each of these would start is not needed.
            cmd.append("--skip-serve-logs")
        return cmd

    def _localcluster_cmd(self) -> list[str]:
        return [
            sys.executable, "-m", "localcluster", "serve",
            "--state-dir", str(self.root / "cluster"),
            "--kubeconfig", str(self.kubeconfig),
            "--port", str(self.ports.cluster),
            "--config", str(self.root / "cluster.yaml"),
            "--audit-log", str(self.audit_log),
        ]  # fmt: skip

    def _mlflow_cmd(self) -> list[str]:
        return [
            sys.executable, "-m", "mlflow", "server",
            "--host", "127.0.0.1", "--port", str(self.ports.mlflow),
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination", str(self.root / "mlartifacts"),
            "--workers", "1",  # one uvicorn process serves the demo (the default is four)
            "--app-name", "basic-auth",  # every call signs in (tools/stack.py: _mlflow_auth)
        ]  # fmt: skip

    def _mlflow_auth(self) -> None:
        """MLflow's accounts and its auth app's settings, made once per stack folder.

        The admin is made by MLflow itself on its first start (from its environment); the
        pipeline's account by ``_mlflow_accounts`` once the server answers. Every signed-in
        account may read every experiment and model (``default_permission``); an account may
        change what it created (MLflow grants its creator MANAGE), and only the admin manages
        accounts and grants.
        """
        auth = self.root / "mlflow-auth"
        auth.mkdir(mode=0o700, exist_ok=True)
        known: dict[str, str] = {}
        if self.mlflow_credentials_file.exists():
            known = json.loads(self.mlflow_credentials_file.read_text())
        if set(MLFLOW_USERS) - set(known):  # a new folder, or one from before an account
            passwords = {user: secrets.token_urlsafe(18) for user in MLFLOW_USERS} | known
            _write_private(self.mlflow_credentials_file, json.dumps(passwords))
        if not (auth / "secret").exists():
            _write_private(auth / "secret", secrets.token_urlsafe(32))
        (auth / "auth.ini").write_text("\n".join([
            "[mlflow]",
            "default_permission = READ",
            f"database_uri = sqlite:///{auth / 'auth.db'}",
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
            # One server process: a checked password is remembered a minute, not hashed
            # again (PBKDF2) on every call of a training run's metric logging.
            "auth_cache_ttl_seconds = 60",
            "",
        ]))  # fmt: skip

    def _mlflow_accounts(self) -> None:
        """The pipeline's and the serving pods' MLflow accounts, made by the admin through
        MLflow's API (once each; a restarted server keeps its accounts).

        Made in a folder whose MLflow already holds experiments and models (a stack from
        before MLflow's auth), the pipeline's account gets MANAGE on each: it made them,
        unsigned."""
        import requests

        admin = requests.Session()
        admin.auth = (ADMIN_USER, self.mlflow_env(ADMIN_USER)["MLFLOW_TRACKING_PASSWORD"])
        api = f"{self.mlflow_url}/api"

        def create(user: str) -> bool:
            password = self.mlflow_env(user)["MLFLOW_TRACKING_PASSWORD"]
            account = {"username": user, "password": password}
            response = admin.post(f"{api}/2.0/mlflow/users/create", json=account, timeout=30)
            if not response.ok and "RESOURCE_ALREADY_EXISTS" not in response.text:
                raise StackError(
                    f"MLflow refused to create the account {user} ({response.status_code}); "
                    f"read its log: {self.log('mlflow')}"
                )
            return response.ok

        # The serving account first: the pipeline's, once made, is never made again, and its
        # grants below are only given then.
        create(MLFLOW_SERVING_USER)
        if not create(MLFLOW_PIPELINE_USER):
            return
        models = admin.get(f"{api}/2.0/mlflow/registered-models/search",
                           params={"max_results": 1000}, timeout=30).json()  # fmt: skip
        experiments = admin.post(f"{api}/2.0/mlflow/experiments/search",
                                 json={"max_results": 1000}, timeout=30).json()  # fmt: skip
        owned = [("registered_model", m["name"]) for m in models.get("registered_models", [])]
        owned += [("experiment", e["experiment_id"]) for e in experiments.get("experiments", [])]
        for kind, key in owned:
            granted = admin.post(f"{api}/3.0/mlflow/users/permissions/grant", timeout=30, json={
                "username": MLFLOW_PIPELINE_USER, "resource_type": kind, "resource_id": key,
                "permission": "MANAGE"})  # fmt: skip
            if not granted.ok:
                raise StackError(f"MLflow refused the pipeline MANAGE on {kind} {key}: "
                                 f"{granted.text[:300]}")  # fmt: skip

    def kubectl(self, *args: str, input_text: str | None = None) -> str:
        cmd = ["kubectl", "--kubeconfig", str(self.kubeconfig), *args]
        return _run(cmd, f"kubectl {' '.join(args)}", input_text=input_text)

    def _setup_cluster(self) -> None:
        """What a platform team applies once: namespace, RBAC, the Gateway and the settings
        (the MLflow Secrets: ``_apply_mlflow_secrets``)."""
        self.kubectl("apply", "-f", str(REPO / "deploy" / "namespace.yaml"))
        self.kubectl("apply", "-f", "-", input_text=yaml.safe_dump_all(AIRFLOW_IDENTITIES))
        self.kubectl("apply", "-f", str(REPO / "deploy" / "rbac.yaml"))
        self.kubectl("apply", "-f", "-", input_text=yaml.safe_dump_all(PROMETHEUS_IDENTITY))
        self._write_kubeconfig(self.airflow_kubeconfig, "airflow", "airflow-worker")
        self._write_kubeconfig(self.prometheus_kubeconfig, "monitoring", "prometheus")
        # A restarted cluster has a new CA and signing key; a Prometheus still running reads
        # its discovery credentials from these files on each refresh.
        Access.from_kubeconfig(self.prometheus_kubeconfig).write_credentials(
            self.root / "prometheus" / prometheus.CREDENTIALS
        )
        self.kubectl("apply", "-f", str(REPO / "deploy" / "serving-gateway.yaml"))
        s = self.settings
        objects = [
            {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "helmsman-settings", "namespace": NAMESPACE},
             "data": {"HELMSMAN_DATASET_URI": str(self.root / "datasets"),
                      "HELMSMAN_PUSHGATEWAY_URL": self.pushgateway_url,
                      # Per model: the churn feed's size, and the file-fed models' files here.
                      "HELMSMAN_SOURCE_URI_CHURN":
                          f"synthetic://churn?rows_per_day={s.rows_per_day}&seed={s.seed}",
                      **{f"HELMSMAN_SOURCE_URI_{m.upper()}": self.raw_uri(m) for m in FILE_FED},
                      # A model made by `make new-model` reads its sample days here.
                      **{f"HELMSMAN_SOURCE_URI_{d.parent.name.upper().replace('-', '_')}":
                         d.as_uri() for d in sorted((REPO / "models").glob("*/sample"))}}},
        ]  # fmt: skip
        self.kubectl("apply", "-f", "-", input_text=yaml.safe_dump_all(objects))

    def _apply_mlflow_secrets(self) -> None:
        """The MLflow accounts as pods read them (envFrom): the pipeline's, and the serving
        pods', which only reads models. As data, not stringData: kubectl apply keeps what it
        sent in an annotation, in plain text."""
        secrets = [
            {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
             "metadata": {"name": name, "namespace": NAMESPACE},
             "data": {key: base64.b64encode(value.encode()).decode()
                      for key, value in self.mlflow_env(user).items()}}
            for name, user in (("helmsman-mlflow", MLFLOW_PIPELINE_USER),
                               ("helmsman-mlflow-serving", MLFLOW_SERVING_USER))
        ]  # fmt: skip
        self.kubectl("apply", "-f", "-", input_text=yaml.safe_dump_all(secrets))

    def _write_kubeconfig(self, path: Path, namespace: str, account: str) -> None:
        """A token for a service account (as a chart's pods get one projected), in a kubeconfig
        of its own at ``path``. It dies with this localcluster (its signing key is made at
        start); a restarted cluster gets a new one here, and its next reader reads it."""
        token = self.kubectl("-n", namespace, "create", "token", account,
                             f"--duration={TOKEN_HOURS}h").strip()  # fmt: skip
        config = yaml.safe_load(self.kubeconfig.read_text())
        config["users"] = [{"name": account, "user": {"token": token}}]
        for context in config["contexts"]:
            context["context"]["user"] = account
            context["context"]["namespace"] = NAMESPACE
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_private(path, yaml.safe_dump(config, sort_keys=False))

    def inject_shift(self, day: dt.date) -> str:
        """Shift the churn feed from ``day`` on (the synthetic source's ``shift_from``): pods
        started from now on read shifted records; returns the source URI now in the settings."""
        key = "HELMSMAN_SOURCE_URI_CHURN"
        current = self.kubectl("-n", NAMESPACE, "get", "configmap", "helmsman-settings",
                               "-o", f"jsonpath={{.data.{key}}}").strip()  # fmt: skip
        parts = urllib.parse.urlsplit(current)
        query = dict(urllib.parse.parse_qsl(parts.query))
        query["shift_from"] = day.isoformat()
        uri = parts._replace(query=urllib.parse.urlencode(query)).geturl()
        patch = json.dumps({"data": {key: uri}})
        self.kubectl("-n", NAMESPACE, "patch", "configmap", "helmsman-settings", "-p", patch)
        return uri

    def airflow(self, *args: str) -> str:
        cmd = [str(BIN / "airflow"), *args]
        return _run(cmd, f"airflow {' '.join(args)}", env=self.airflow_env(), timeout=300)

    def _airflow_init(self) -> None:
        """A fresh stack's database is a copy of the migrated template; an existing one is
        migrated in place (a no-op unless Airflow was upgraded under it)."""
        database = self.root / "airflow" / "airflow.db"
        if database.exists():
            self.airflow("db", "migrate")
            self.airflow("pools", "import", str(POOLS_FILE))
        else:
            shutil.copyfile(airflow_db_template(), database)

    def _wait_airflow_healthy(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        last: Any = None
        parts = ["metadatabase", "scheduler", "dag_processor"]
        if "triggerer" in self.pids:
            parts.append("triggerer")
        while time.monotonic() < deadline:
            for name in self.pids:
                if not alive(self.pids[name]):
                    raise StackError(f"{name} exited; read its log: {self.log(name)}")
            try:
                with urllib.request.urlopen(  # noqa: S310 - our own local api-server
                    f"{self.airflow_url}/api/v2/monitor/health", timeout=5
                ) as response:
                    last = json.load(response)
            except (OSError, ValueError) as exc:
                last = str(exc)
            else:
                if all((last.get(p) or {}).get("status") == "healthy" for p in parts):
                    return
            time.sleep(1)
        raise StackError(
            f"Airflow did not report healthy within {timeout:.0f}s (last: {last}); read "
            f"{self.root / 'logs'}/scheduler.log and dag-processor.log"
        )
