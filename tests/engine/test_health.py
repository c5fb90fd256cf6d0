"""Health checks never reach link-local addresses (cloud metadata), whatever the URL says."""

from __future__ import annotations

import pytest

from builds.engine.health import HealthCheckFailed, HealthCheckSpec, refused_address, run_check


@pytest.mark.parametrize(
    "url",
    ["http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/", "http://100.100.100.200/"],
)
def test_it_refuses_link_local_and_metadata_addresses(url):
    assert "link-local" in refused_address(url)
    check = HealthCheckSpec(kind="http", url=url, retries=2, interval_seconds=0, timeout_seconds=1)
    lines: list[str] = []
    with pytest.raises(HealthCheckFailed, match="link-local"):
        run_check(check, variables={}, connection=None, workdir="/", log=lines.append)
    assert len(lines) == 2


def test_it_allows_the_servers_own_private_and_loopback_addresses():
    assert refused_address("http://127.0.0.1:8080/health") == ""
    assert refused_address("http://10.1.2.3/health") == ""
