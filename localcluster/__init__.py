"""localcluster: a small Kubernetes that runs pods as local processes.

It speaks the Kubernetes REST API well enough that the real ``kubernetes`` client, the real
``KubernetesPodOperator`` and real ``kubectl`` work against it unchanged, through the
kubeconfig it writes. Its parts mirror Kubernetes' own split and talk only through the object
store, as the real components talk only through the API server:

- ``store``       objects, resourceVersions, watch, ownership and garbage collection
- ``apiserver``   HTTP: discovery, CRUD, selectors, patch, watch, pod logs
- ``scheduler``   binds pods to nodes by resources, node selectors and taints
- ``kubelet``     runs containers as processes: env, logs, exit codes, restarts
- ``resources``   the kinds it knows and how they appear in discovery

It is for the demo and the tests; nothing in dags/, plugins/ or images/ depends on it.
"""
