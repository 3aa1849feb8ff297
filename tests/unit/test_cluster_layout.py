"""The cluster's layout and HAProxy configuration (scripts/cluster.py), without starting it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from scripts.cluster import Cluster, haproxy_config

HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")


@pytest.fixture(params=[True, False], ids=["namespaces", "loopback"])
def cluster(request: pytest.FixtureRequest) -> Cluster:
    laid_out = Cluster(name="clu", subnet=217, namespaces=request.param)
    laid_out.layout()
    return laid_out


class TestLayout:
    def test_every_host_has_its_own_address_and_the_roles_are_as_issued(
        self, cluster: Cluster
    ) -> None:
        addresses = [host.address for host in cluster.hosts]
        assert len(set(addresses)) == len(addresses)
        assert cluster.client_address not in addresses
        counts = {role: len(cluster.role(role)) for role in {h.role for h in cluster.hosts}}
        assert counts == {
            "api": 3, "realtime": 2, "worker": 3, "scheduler": 1, "data": 1, "edge": 1,
        }  # fmt: skip

    def test_without_namespaces_each_web_host_listens_on_a_port_of_its_own(
        self, cluster: Cluster
    ) -> None:
        ports = [host.port for host in cluster.hosts if host.port is not None]
        if cluster.namespaces:
            assert {host.port for host in cluster.role("api")} == {8000}
        else:
            assert len(set(ports)) == len(ports)
            assert all(address.startswith("127.") for address in (h.address for h in cluster.hosts))

    def test_only_haproxy_is_trusted_for_x_forwarded_for(self, cluster: Cluster) -> None:
        for role in ("api", "realtime", "worker"):
            host = cluster.role(role)[0]
            env = cluster.env(role, host)
            assert env["FORWARDED_ALLOW_IPS"] == cluster.host("edge").address

    def test_the_connection_budget_check_counts_the_clusters_own_hosts(
        self, cluster: Cluster
    ) -> None:
        for role in ("api", "worker"):
            env = cluster.env(role, cluster.role(role)[0])
            assert env["INSTANCE_COUNT"] == "3"


class TestHaproxyConfig:
    def test_checks_readiness_balances_round_robin_and_appends_x_forwarded_for(
        self, cluster: Cluster
    ) -> None:
        config = haproxy_config(cluster)
        assert config.count("uri /health/ready") == 2
        assert config.count("balance roundrobin") == 2
        assert "option forwardfor" in config
        for host in [*cluster.role("api"), *cluster.role("realtime")]:
            assert f"server {host.name} {host.address}:{host.port}" in config

    @pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed")
    def test_haproxy_accepts_the_configuration(self, cluster: Cluster, tmp_path: Path) -> None:
        assert HAPROXY is not None
        path = tmp_path / "haproxy.cfg"
        path.write_text(haproxy_config(cluster))
        checked = subprocess.run(
            [HAPROXY, "-c", "-f", str(path)], capture_output=True, text=True, check=False
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
