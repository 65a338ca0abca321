"""The sidecar packaging, without a Docker engine: the files parse, reference files that exist,
carry a config ssaproxy accepts, and the image's init and health commands work as the image
would run them (in a network namespace)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ssaproxy.config import Config
from ssaproxy.tls.load import check_config
from tests.lab import REPO, Lab, poll
from tests.pki import PKI

DOCKER = REPO / "docker"


def _config_with_test_certs(text: str, pki: PKI, tmp: Path) -> str:
    """The example config with its /etc/ssaproxy/tls files replaced by test material."""
    tls = tmp / "tls"
    tls.mkdir(exist_ok=True)
    shutil.copy(pki.root_pem, tls / "ca.pem")
    shutil.copy(pki.server("good").chain, tls / "identity.pem")
    shutil.copy(pki.server("good").key, tls / "identity.key")
    return text.replace("/etc/ssaproxy/tls/", f"{tls}/")


def test_dockerfile_copies_files_that_exist_and_runs_unprivileged() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    # Sources in the build context (a COPY --from=STAGE copies from an earlier stage instead).
    sources = [src for line in text.splitlines() if line.startswith("COPY ") and "--from=" not in line
               for src in line.split()[1:-1]]
    assert sources, "no COPY lines found"
    for src in sources:
        assert (REPO / src).exists(), src
    assert re.search(r"^USER 10001$", text, re.M)
    assert "setup.py" in sources  # it builds the C library: without it the image would lack it
    assert re.search(r"^COPY --from=build /wheels /wheels$", text, re.M)
    assert "HEALTHCHECK" in text and "healthcheck.py" in text
    assert 'ENTRYPOINT ["twistd", "--nodaemon", "--pidfile=", "ssaproxy"]' in text


def test_compose_parses_and_references_existing_files() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert {"app", "ssaproxy-init", "ssaproxy"} <= set(services)
    for name in ("ssaproxy-init", "ssaproxy"):
        svc = services[name]
        assert svc["network_mode"] == "service:app"  # the sidecar shares the app's network namespace
        context = (DOCKER / svc["build"]["context"]).resolve()
        assert (context / svc["build"]["dockerfile"]).is_file()
        for volume in svc["volumes"]:
            assert (DOCKER / volume.split(":")[0]).exists(), volume
    assert services["ssaproxy-init"]["cap_add"] == ["NET_ADMIN"]
    assert services["ssaproxy"]["depends_on"]["ssaproxy-init"]["condition"] == "service_completed_successfully"


def test_kubernetes_pod_parses_and_matches_the_example_config() -> None:
    docs = list(yaml.safe_load_all((DOCKER / "k8s" / "pod.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"ConfigMap", "Pod"}
    assert kinds["ConfigMap"]["data"]["ssaproxy.toml"].strip() == _without_comments(
        (DOCKER / "example" / "ssaproxy.toml").read_text())
    spec = kinds["Pod"]["spec"]
    (init,) = spec["initContainers"]
    assert init["command"][0] == "/usr/local/lib/ssaproxy/init.sh"
    assert init["securityContext"]["capabilities"]["add"] == ["NET_ADMIN"]
    # SIGTERM drains: the kubelet must wait longer than that before its SIGKILL.
    assert spec["terminationGracePeriodSeconds"] > Config.from_toml(kinds["ConfigMap"]["data"]["ssaproxy.toml"]
                                                                    ).daemon.drain_timeout
    sidecar = next(c for c in spec["containers"] if c["name"] == "ssaproxy")
    assert sidecar["securityContext"]["runAsUser"] == 10001 and sidecar["securityContext"]["runAsNonRoot"]


def _without_comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("#")).strip()


def test_example_config_is_accepted(pki: PKI, tmp_path: Path) -> None:
    text = _config_with_test_certs((DOCKER / "example" / "ssaproxy.toml").read_text(), pki, tmp_path)
    config = Config.from_toml(text)
    check_config(config)  # the certificates it names load, as the daemon would load them
    assert config.inbound[0].backend.original and config.inbound[0].client_auth == "require"
    assert config.outbound.routes[0].client_certificate is not None


def test_init_and_healthcheck_commands_in_a_network_namespace(lab: Lab, pki: PKI, tmp_path: Path) -> None:
    config = tmp_path / "ssaproxy.toml"
    config.write_text(_config_with_test_certs((DOCKER / "example" / "ssaproxy.toml").read_text(), pki, tmp_path))
    env = dict(os.environ, SSAPROXY_UID="10001",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    r = subprocess.run(["ip", "netns", "exec", lab.s, "sh", str(DOCKER / "init.sh"), str(config)], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rules = lab.ns(lab.s, ["iptables", "-t", "nat", "-S"]).stdout
    assert "--uid-owner 10001 -j RETURN" in rules
    assert "-A PREROUTING -p tcp -j SSAPROXY_INBOUND" in rules and "--dports 8080" in rules
    assert "-A OUTPUT -p tcp -j SSAPROXY_OUTPUT" in rules
    health = [sys.executable, str(DOCKER / "healthcheck.py"), str(config)]
    assert lab.ns(lab.s, health, check=False).returncode == 1  # nothing listening yet
    lab.start_daemon(config, tmp_path / "daemon.log", ns=lab.s)
    assert poll(lambda: lab.ns(lab.s, health, check=False).returncode == 0)
    ready = [sys.executable, str(DOCKER / "healthcheck.py"), "--ready", str(config)]
    assert poll(lambda: lab.ns(lab.s, ready, check=False).returncode == 0)  # GET /readyz on the admin endpoint
    lab.ns(lab.s, [sys.executable, "-m", "ssaproxy.cli", "iptables", "remove"], cwd=REPO)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki-docker"))
