"""The kinds localcluster serves, and their discovery documents.

Kinds it runs (pods, deployments, ...) and kinds it only stores so that ``kubectl apply`` of
real manifests works (roles, network policies, ...) are listed alike; which components act on
a kind is up to the components.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    subresources: tuple[str, ...] = ()
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()  # "all": what `kubectl get all` lists
    verbs: tuple[str, ...] = (
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch",
    )

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


KINDS: tuple[Kind, ...] = (
    Kind(
        "",
        "v1",
        "namespaces",
        "Namespace",
        namespaced=False,
        subresources=("status",),
        short_names=("ns",),
    ),
    Kind(
        "", "v1", "nodes", "Node", namespaced=False, subresources=("status",), short_names=("no",)
    ),
    Kind(
        "",
        "v1",
        "pods",
        "Pod",
        subresources=("status", "log", "binding", "eviction", "exec", "attach", "portforward"),
        short_names=("po",),
        categories=("all",),
    ),
    Kind("", "v1", "events", "Event", short_names=("ev",)),
    Kind(
        "",
        "v1",
        "services",
        "Service",
        subresources=("status",),
        short_names=("svc",),
        categories=("all",),
    ),
    Kind(
        "",
        "v1",
        "replicationcontrollers",
        "ReplicationController",
        subresources=("status", "scale"),
        short_names=("rc",),
        categories=("all",),
    ),
    Kind("", "v1", "endpoints", "Endpoints", short_names=("ep",)),
    Kind("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
    Kind("", "v1", "secrets", "Secret"),
    Kind(
        "", "v1", "serviceaccounts", "ServiceAccount", subresources=("token",), short_names=("sa",)
    ),
    Kind(
        "",
        "v1",
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        subresources=("status",),
        short_names=("pvc",),
    ),
    Kind(
        "",
        "v1",
        "resourcequotas",
        "ResourceQuota",
        subresources=("status",),
        short_names=("quota",),
    ),
    Kind("", "v1", "limitranges", "LimitRange", short_names=("limits",)),
    Kind(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        subresources=("status", "scale"),
        short_names=("deploy",),
        categories=("all",),
    ),
    Kind(
        "apps",
        "v1",
        "replicasets",
        "ReplicaSet",
        subresources=("status", "scale"),
        short_names=("rs",),
        categories=("all",),
    ),
    Kind(
        "apps",
        "v1",
        "daemonsets",
        "DaemonSet",
        subresources=("status",),
        short_names=("ds",),
        categories=("all",),
    ),
    Kind("apps", "v1", "controllerrevisions", "ControllerRevision"),
    Kind("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"),
    Kind(
        "autoscaling",
        "v2",
        "horizontalpodautoscalers",
        "HorizontalPodAutoscaler",
        subresources=("status",),
        short_names=("hpa",),
        categories=("all",),
    ),
    Kind(
        "policy",
        "v1",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        subresources=("status",),
        short_names=("pdb",),
    ),
    Kind("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", short_names=("netpol",)),
    Kind("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    Kind("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    Kind("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced=False),
    Kind(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        namespaced=False,
    ),
    Kind("batch", "v1", "jobs", "Job", subresources=("status",), categories=("all",)),
    Kind(
        "batch",
        "v1",
        "cronjobs",
        "CronJob",
        subresources=("status",),
        short_names=("cj",),
        categories=("all",),
    ),
    Kind(
        "scheduling.k8s.io",
        "v1",
        "priorityclasses",
        "PriorityClass",
        namespaced=False,
        short_names=("pc",),
    ),
    Kind("coordination.k8s.io", "v1", "leases", "Lease"),
    # metrics.k8s.io (metrics-server's API): read from the kubelet's samples, never stored.
    Kind("metrics.k8s.io", "v1beta1", "pods", "PodMetrics", verbs=("get", "list")),
    Kind(
        "metrics.k8s.io", "v1beta1", "nodes", "NodeMetrics", namespaced=False, verbs=("get", "list")
    ),
    # Reviews: answered, never stored (create only), as the real server's.
    Kind(
        "authorization.k8s.io",
        "v1",
        "selfsubjectaccessreviews",
        "SelfSubjectAccessReview",
        namespaced=False,
        verbs=("create",),
    ),
    Kind(
        "authorization.k8s.io",
        "v1",
        "selfsubjectrulesreviews",
        "SelfSubjectRulesReview",
        namespaced=False,
        verbs=("create",),
    ),
    Kind(
        "authentication.k8s.io",
        "v1",
        "selfsubjectreviews",
        "SelfSubjectReview",
        namespaced=False,
        verbs=("create",),
    ),
    # The Gateway API (a CRD on a real cluster; built in here): the Service proxy's gateway
    # listeners route by HTTPRoute weights and mirror filters (localcluster/gateway.py).
    Kind(
        "gateway.networking.k8s.io",
        "v1",
        "gatewayclasses",
        "GatewayClass",
        namespaced=False,
        subresources=("status",),
        short_names=("gc",),
    ),
    Kind(
        "gateway.networking.k8s.io",
        "v1",
        "gateways",
        "Gateway",
        subresources=("status",),
        short_names=("gtw",),
    ),
    Kind("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute", subresources=("status",)),
)

BY_PATH = {(k.group, k.version, k.plural): k for k in KINDS}
BY_KIND = {(k.api_version, k.kind): k for k in KINDS}


def lookup(group: str, version: str, plural: str) -> Kind | None:
    return BY_PATH.get((group, version, plural))


def kind(group: str, version: str, plural: str) -> Kind:
    """A kind this module declares (for components' constants); KeyError otherwise."""
    return BY_PATH[(group, version, plural)]


# The kinds components act on, named once for every module.
CONFIGMAPS = kind("", "v1", "configmaps")
CRONJOBS = kind("batch", "v1", "cronjobs")
DAEMONSETS = kind("apps", "v1", "daemonsets")
DEPLOYMENTS = kind("apps", "v1", "deployments")
ENDPOINTS = kind("", "v1", "endpoints")
EVENTS = kind("", "v1", "events")
GATEWAYS = kind("gateway.networking.k8s.io", "v1", "gateways")
JOBS = kind("batch", "v1", "jobs")
NAMESPACES = kind("", "v1", "namespaces")
NODES = kind("", "v1", "nodes")
PODS = kind("", "v1", "pods")
HPAS = kind("autoscaling", "v2", "horizontalpodautoscalers")
PDBS = kind("policy", "v1", "poddisruptionbudgets")
PRIORITY_CLASSES = kind("scheduling.k8s.io", "v1", "priorityclasses")
PVCS = kind("", "v1", "persistentvolumeclaims")
REPLICASETS = kind("apps", "v1", "replicasets")
REPLICATION_CONTROLLERS = kind("", "v1", "replicationcontrollers")
ROUTES = kind("gateway.networking.k8s.io", "v1", "httproutes")
ROLES = kind("rbac.authorization.k8s.io", "v1", "roles")
ROLE_BINDINGS = kind("rbac.authorization.k8s.io", "v1", "rolebindings")
CLUSTER_ROLES = kind("rbac.authorization.k8s.io", "v1", "clusterroles")
CLUSTER_ROLE_BINDINGS = kind("rbac.authorization.k8s.io", "v1", "clusterrolebindings")
SECRETS = kind("", "v1", "secrets")
SERVICES = kind("", "v1", "services")
SERVICE_ACCOUNTS = kind("", "v1", "serviceaccounts")


def groups() -> dict[str, list[str]]:
    """Group name -> versions served, in the order kinds are declared."""
    result: dict[str, list[str]] = {}
    for k in KINDS:
        if k.group and k.version not in result.setdefault(k.group, []):
            result[k.group].append(k.version)
    return result


# Subresources whose discovery entry differs from status's: (kind, verbs), as the real server.
SUBRESOURCES: dict[str, tuple[str, list[str]]] = {
    "scale": ("Scale", ["get", "patch", "update"]),
    "binding": ("Binding", ["create"]),
    "eviction": ("Eviction", ["create"]),
    "log": ("Pod", ["get"]),
    "exec": ("PodExecOptions", ["create", "get"]),
    "attach": ("PodAttachOptions", ["create", "get"]),
    "portforward": ("PodPortForwardOptions", ["create", "get"]),
    "token": ("TokenRequest", ["create"]),
}


def resource_list(group: str, version: str) -> dict[str, Any] | None:
    kinds = [k for k in KINDS if (k.group, k.version) == (group, version)]
    if not kinds:
        return None
    resources: list[dict[str, Any]] = []
    for k in kinds:
        resources.append(
            {
                "name": k.plural,
                "singularName": k.kind.lower(),
                "namespaced": k.namespaced,
                "kind": k.kind,
                "verbs": list(k.verbs),
                "shortNames": list(k.short_names),
                **({"categories": list(k.categories)} if k.categories else {}),
            }
        )
        for sub in k.subresources:
            sub_kind, verbs = SUBRESOURCES.get(sub, (k.kind, ["get", "patch", "update"]))
            resources.append(
                {
                    "name": f"{k.plural}/{sub}",
                    "singularName": "",
                    "namespaced": k.namespaced,
                    "kind": sub_kind,
                    "verbs": verbs,
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": resources,
    }
