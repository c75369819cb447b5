"""Serving: how a model version reaches users, gated before and during exposure.

- :mod:`.objects`: the serving objects of an instance (a Deployment per slot, the stable and
  preview Services, the HTTPRoute, the autoscaler, the disruption budget), from the manifests.
- :mod:`.kube`: the Kubernetes calls; no write to an object Helmsman does not manage.
- :mod:`.traffic`: weights through the Gateway API, or the replica ratio without a Gateway.
- :mod:`.verify`: the checks through the preview Service before any user request.
- :mod:`.analysis`: each step judged on live traffic from Prometheus; verdicts are pure.
- :mod:`.session`: the rollout session: the lock (a Lease), the record, every phase, resume.

The Airflow side is a thin adapter (:mod:`helmsman.deploy`); nothing here imports Airflow.
"""
