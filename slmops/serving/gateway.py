"""The replica sets as Kubernetes manifests behind a Gateway API implementation: the
production form of what the HAProxy router does locally.

One Service per replica set (selecting the pods labelled `slmops.io/replica-set: <set>`,
e.g. a Deployment of vLLM per base revision) and one HTTPRoute whose backendRefs weight the
sets. A canary step or a rollback is the same HTTPRoute with other weights (`kubectl apply`),
which every conformant implementation applies without dropping connections (llm-d's
blue/green, KServe's route groups). `slmops serve gateway-manifests` writes them; a test checks
them against the Gateway API's schema.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from slmops.errors import ConfigError
from slmops.serving.client import ServingConfig
from slmops.serving.router import server_weights

SET_LABEL = "slmops.io/replica-set"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def k8s_name(*parts: str) -> str:
    """A DNS-1123 label from set and adapter names (lower case; '_' and '.' become '-')."""
    name = "-".join(re.sub(r"[_.]", "-", p.lower()) for p in parts if p)
    if not _DNS_LABEL.match(name):
        raise ConfigError(
            f"{name!r} is not a Kubernetes name (at most 63 of a-z, 0-9 and '-', starting and "
            "ending with a letter or digit): choose shorter set or adapter names"
        )
    return name


def gateway_manifests(
    config: ServingConfig,
    shares: Mapping[str, float],
    *,
    name: str,
    gateway: str,
    namespace: str = "default",
    port: int = 8000,
) -> list[dict[str, Any]]:
    """A Service per replica set of `config` and the HTTPRoute `name` attached to Gateway
    `gateway`, splitting requests between the sets as `shares` (percent, summing to 100)
    says. `port`: the vLLM containers' port."""
    sets = config.sets()
    unknown = set(shares) - set(sets)
    if unknown:
        raise ConfigError(f"no replica set {', '.join(sorted(unknown))} in the serving config")
    if not 0 < port < 65536:
        raise ConfigError(f"port {port}: 1 to 65535")
    # The Gateway API's weights are relative (0 to 1,000,000): tenths of a percent here, so a
    # person reads 900/100 as 90%/10%; a set with a share gets at least 1.
    full = {s: float(shares.get(s, 0)) for s in sets}
    server_weights(full, dict.fromkeys(sets, 1))  # the same rules as the router's shares
    weights = {s: max(round(v * 10), 1) if v > 0 else 0 for s, v in full.items()}
    meta = {"namespace": namespace, "labels": {"app.kubernetes.io/managed-by": "slmops"}}
    docs: list[dict[str, Any]] = []
    refs = []
    for set_name, replicas in sets.items():
        service = k8s_name(name, set_name)
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": service,
                    **meta,
                    "annotations": {
                        "slmops.io/base-model": f"{replicas[0].model}@{replicas[0].revision}"
                    },
                },
                "spec": {
                    "selector": {SET_LABEL: k8s_name(set_name)},
                    "ports": [{"name": "http", "port": port, "targetPort": port}],
                },
            }
        )
        refs.append({"name": service, "port": port, "weight": weights[set_name]})
    docs.append(
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": k8s_name(name), **meta},
            "spec": {
                "parentRefs": [{"name": gateway}],
                "rules": [
                    {
                        "matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}],
                        "backendRefs": refs,
                        # a long completion is not a hung backend
                        "timeouts": {"request": "600s"},
                    }
                ],
            },
        }
    )
    return docs
