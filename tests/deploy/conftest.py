"""Pod specs are built with the offline Kubernetes connection the plugin tests use."""

from tests.plugins.conftest import offline_kubernetes_connection

__all__ = ["offline_kubernetes_connection"]
