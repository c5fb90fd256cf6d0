"""FTP and FTPS servers: files in place by manifest against a real pyftpdlib server on
loopback (tests/support/ftpd.py), the certificate pinned, PASV to another host refused."""

from __future__ import annotations

import dataclasses
import os
import socket
import ssl
import time

import pytest

from builds.engine import ftp, pipeline
from builds.engine.errors import (
    AuthenticationRefused,
    CertificateMismatch,
    CertificateNotTrusted,
    InvalidInput,
    PassiveAddressRefused,
)
from builds.engine.health import HealthCheckSpec
from builds.engine.specs import CommandSpec, ConfigFileSpec
from builds.engine.ssh import Endpoint
from tests.support.engine import RecordingReporter, after, deploy_spec

SITE = {
    "index.html": "<h1>Shop</h1>\n",
    "css/site.css": "body { color: black }\n",
    "js/app.js": "console.log('v1')\n",
    "img/logo.svg": "<svg/>\n",
}


def ftp_server(target, server_id: int = 1, **endpoint_overrides) -> pipeline.ServerSpec:
    return pipeline.ServerSpec(
        id=server_id,
        name=f"ftp{server_id}",
        endpoint=Endpoint(hostname="127.0.0.1", username="deploy", port=target.port),
        deploy_path="/site",
        atomic=False,
        shell=False,
        ftp=target.endpoint(**endpoint_overrides),
    )


def _deploy(repo, tmp_path, server, revision, deployment_id, **overrides):
    reporter = RecordingReporter()
    result = pipeline.deploy(
        deploy_spec(repo, tmp_path, [server], revision, deployment_id=deployment_id, **overrides),
        reporter,
    )
    return result, reporter


def _ok(result) -> None:
    assert result.ok, [str(r.error) for r in result.servers]


def _files(target) -> dict[str, str]:
    root = target.deploy_path
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, root)
            if not relative.startswith(".slipway"):
                with open(path) as handle:
                    found[relative] = handle.read()
    return found


@pytest.mark.parametrize("tls", [False, True], ids=["ftp", "ftps"])
def test_it_deploys_in_place_then_sends_only_what_changed_and_deletes_what_is_gone(
    ftpd_factory, git_repo_factory, tmp_path, tls
):
    target = ftpd_factory(tls=tls)
    repo = git_repo_factory()
    a = repo.commit(SITE, "A")
    server = ftp_server(target)
    first, reporter = _deploy(repo, tmp_path, server, a, 1)
    _ok(first)
    assert _files(target) == SITE
    assert target.sent() == sorted(f"site/{path}" for path in SITE)  # each file once
    assert (target.deploy_path / ftp.MANIFEST_FILE).exists()
    assert not (target.deploy_path / ftp.LOCK_DIR).exists()
    assert f"in place over {'FTPS' if tls else 'FTP'}" in reporter.text

    b = repo.commit(
        {"js/app.js": "console.log('v2')\n", "about.html": "<p>us</p>\n", "img/logo.svg": None},
        "B",
    )
    target.stored.clear()
    second, reporter = _deploy(repo, tmp_path, after(first, server), b, 2)
    _ok(second)
    assert target.sent() == ["site/about.html", "site/js/app.js"]
    files = _files(target)
    assert files["js/app.js"] == "console.log('v2')\n"
    assert "img/logo.svg" not in files and not (target.deploy_path / "img").exists()
    assert (
        "2 files added" not in reporter.text
        and "1 files added, 1 modified, 1 deleted" in reporter.text
    )


def test_the_same_revision_again_sends_nothing(ftp_target, git_repo_factory, tmp_path):
    repo = git_repo_factory()
    a = repo.commit(SITE, "A")
    server = ftp_server(ftp_target)
    first, _ = _deploy(repo, tmp_path, server, a, 1)
    _ok(first)
    ftp_target.stored.clear()
    again, reporter = _deploy(repo, tmp_path, after(first, server), a, 2)
    _ok(again)
    assert ftp_target.sent() == []
    assert "Nothing changed" in reporter.text
    assert "changed on the server" not in reporter.text


def test_a_file_changed_on_the_server_is_found_and_restored(ftp_target, git_repo_factory, tmp_path):
    repo = git_repo_factory()
    a = repo.commit(SITE, "A")
    server = ftp_server(ftp_target)
    first, _ = _deploy(repo, tmp_path, server, a, 1)
    _ok(first)
    site = ftp_target.deploy_path
    time.sleep(1.1)  # MLSD's modification times are to the second
    (site / "css" / "site.css").write_text("body { color: red }\n")  # edited by hand
    (site / "js" / "app.js").unlink()  # removed by hand
    (site / "backdoor.php").write_text("<?php system($_GET['c']);\n")  # added by hand
    ftp_target.stored.clear()
    again, reporter = _deploy(repo, tmp_path, after(first, server), a, 2)
    _ok(again)
    assert _files(ftp_target) == SITE
    assert "3 paths were changed on the server" in reporter.text
    assert ftp_target.sent() == ["site/css/site.css", "site/js/app.js"]


def test_rollback_uploads_again_what_differs_from_the_earlier_release_and_says_so(
    ftp_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit(SITE, "A")
    server = ftp_server(ftp_target)
    first, _ = _deploy(repo, tmp_path, server, a, 1)
    _ok(first)
    repo.commit({"js/app.js": "console.log('broken')\n", "new.html": "new\n"}, "B")
    second, _ = _deploy(repo, tmp_path, after(first, server), "main", 2)
    _ok(second)
    ftp_target.stored.clear()
    release = first.servers[0].release
    back, reporter = _deploy(
        repo, tmp_path, after(second, server), a, 3, rollback_to={server.id: release}
    )
    _ok(back)
    assert _files(ftp_target) == SITE
    assert ftp_target.sent() == ["site/js/app.js"]
    assert f"Rolling back to {release}: FTP has no symlink to switch" in reporter.text
    assert "0 files added, 1 modified, 1 deleted" in reporter.text


def test_config_files_are_written_and_the_manifest_kept_on_the_server(
    ftp_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit(SITE, "A")
    files = (ConfigFileSpec(path="config/.env", body="KEY=%server%\n"),)
    result, _ = _deploy(repo, tmp_path, ftp_server(ftp_target), a, 1, config_files=files)
    _ok(result)
    assert (ftp_target.deploy_path / "config" / ".env").read_text() == "KEY=ftp1\n"
    assert (ftp_target.deploy_path / "config" / ".env").stat().st_mode & 0o777 == 0o600
    kept = (ftp_target.deploy_path / ftp.MANIFEST_FILE).read_bytes()
    assert result.servers[0].manifest is not None
    assert kept == result.servers[0].manifest.to_json()


def test_many_files_go_over_several_connections_no_more_than_the_setting(
    ftp_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit({f"page{n}.html": f"page {n}\n" * 50 for n in range(40)}, "A")
    result, _ = _deploy(repo, tmp_path, ftp_server(ftp_target, connections=3), a, 1)
    _ok(result)
    assert len(ftp_target.sent()) == 40
    # One control connection for the lock and manifest, three for the files.
    assert ftp_target.commands.count("PASS") == 4


def test_a_wrong_password_is_named(ftp_target, git_repo_factory, tmp_path):
    repo = git_repo_factory()
    a = repo.commit(SITE, "A")
    result, _ = _deploy(repo, tmp_path, ftp_server(ftp_target, password="wrong"), a, 1)
    error = result.servers[0].error
    assert isinstance(error, AuthenticationRefused)
    assert "refused the login of 'deploy': wrong user name or password" in str(error)
    assert ftp_target.stored == []


def test_a_certificate_that_does_not_match_the_pin_is_refused_before_the_password(
    ftps_target, ftpd_factory, git_repo_factory, tmp_path
):
    other = ftpd_factory(tls=True)
    repo = git_repo_factory()
    a = repo.commit(SITE, "A")
    server = ftp_server(ftps_target, certificate_fingerprint=other.fingerprint)
    result, _ = _deploy(repo, tmp_path, server, a, 1)
    error = result.servers[0].error
    assert isinstance(error, CertificateMismatch)
    assert other.fingerprint in str(error) and ftps_target.fingerprint in str(error)
    assert "PASS" not in ftps_target.commands and ftps_target.stored == []


def test_an_unpinned_self_signed_certificate_cannot_be_deployed_to_but_probe_shows_it(
    ftps_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit(SITE, "A")
    result, _ = _deploy(repo, tmp_path, ftp_server(ftps_target, certificate_fingerprint=None), a, 1)
    assert isinstance(result.servers[0].error, CertificateNotTrusted)
    assert "PASS" not in ftps_target.commands
    found = ftp.probe(ftps_target.endpoint(certificate_fingerprint=None))
    assert found.fingerprint == ftps_target.fingerprint
    assert not found.verified and not found.trusted and not found.logged_in
    pinned = ftp.probe(ftps_target.endpoint())
    assert pinned.trusted and pinned.logged_in and "Slipway test FTP" in pinned.welcome


def test_a_certificate_the_system_authorities_vouch_for_needs_no_pin(
    ftpd_factory, git_repo_factory, tmp_path, monkeypatch
):
    authority = tmp_path / "ca.pem"
    target = ftpd_factory(tls=True, authority=authority)
    # OpenSSL's default verify paths (the system's store) follow SSL_CERT_FILE.
    monkeypatch.setenv("SSL_CERT_FILE", str(authority))
    found = ftp.probe(target.endpoint(certificate_fingerprint=None))
    assert found.verified and found.trusted and found.logged_in
    assert found.fingerprint == target.fingerprint
    repo = git_repo_factory()
    a = repo.commit(SITE, "A")
    result, _ = _deploy(repo, tmp_path, ftp_server(target, certificate_fingerprint=None), a, 1)
    _ok(result)
    assert _files(target) == SITE
    # Without the authority, the same certificate is refused before the password.
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "none.pem"))
    with pytest.raises(CertificateNotTrusted):
        ftp.connect(target.endpoint(certificate_fingerprint=None))


def test_data_connections_reuse_the_control_connections_tls_session(ftps_target):
    (ftps_target.deploy_path / "hello.txt").write_text("hello\n")
    client = ftp.connect(ftps_target.endpoint())
    try:
        conn, _ = client.ntransfercmd("RETR /site/hello.txt")
        try:
            assert isinstance(conn, ssl.SSLSocket)
            reused = conn.session_reused
            received = b""
            while chunk := conn.recv(8192):
                received += chunk
        finally:
            conn.close()
        client.voidresp()
    finally:
        client.quit()
    assert reused
    assert received == b"hello\n"


def test_without_session_reuse_each_data_connection_shows_the_pinned_certificate(
    ftpd_factory, git_repo_factory, tmp_path
):
    target = ftpd_factory(tls=True, resume=False)
    client = ftp.connect(target.endpoint())
    try:
        conn, _ = client.ntransfercmd("LIST /site")
        assert isinstance(conn, ssl.SSLSocket) and not conn.session_reused
        while conn.recv(8192):
            pass
        conn.close()
        client.voidresp()
    finally:
        client.quit()
    repo = git_repo_factory()
    result, _ = _deploy(repo, tmp_path, ftp_server(target), repo.commit(SITE, "A"), 1)
    _ok(result)
    assert _files(target) == SITE


def test_a_pasv_reply_naming_another_host_is_refused(ftpd_factory, git_repo_factory, tmp_path):
    target = ftpd_factory(masquerade="127.0.0.2")
    client = ftp.connect(target.endpoint())
    try:
        with pytest.raises(PassiveAddressRefused) as refused:
            client.nlst("/site")
        assert "127.0.0.2" in str(refused.value)
    finally:
        client.close()
    repo = git_repo_factory()
    a = repo.commit(SITE, "A")
    result, _ = _deploy(repo, tmp_path, ftp_server(target), a, 1)
    assert isinstance(result.servers[0].error, PassiveAddressRefused)
    assert target.stored == []


def test_what_ftp_cannot_give_is_refused_naming_the_setting(ftp_target, git_repo_factory, tmp_path):
    repo = git_repo_factory()
    a = repo.commit(SITE, "A")
    server = ftp_server(ftp_target)
    shared, _ = _deploy(repo, tmp_path, server, a, 1, shared_paths=("storage/",))
    assert "`shared_paths`" in str(shared.servers[0].error)
    commands = (CommandSpec(command="php artisan migrate", stage="after_switch"),)
    command, _ = _deploy(repo, tmp_path, server, a, 2, commands=commands)
    assert "`commands`" in str(command.servers[0].error)
    assert "php artisan migrate" in str(command.servers[0].error)
    atomic, _ = _deploy(repo, tmp_path, dataclasses.replace(server, atomic=True), a, 3)
    assert "`atomic`" in str(atomic.servers[0].error)
    check = HealthCheckSpec(kind="command", command="test -f index.html", when="after_switch")
    checked, _ = _deploy(repo, tmp_path, server, a, 4, health_checks=(check,))
    assert "`health_checks`" in str(checked.servers[0].error)
    assert ftp_target.stored == []


def test_a_path_ftp_cannot_carry_is_refused_before_anything_is_sent(
    ftp_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit({**SITE, "notes/line\nbreak.txt": "x\n"}, "A")
    result, _ = _deploy(repo, tmp_path, ftp_server(ftp_target), a, 1)
    assert "cannot carry a line break" in str(result.servers[0].error)
    assert ftp_target.sent() == []


def test_a_lock_held_by_a_running_deployment_is_refused(ftp_target, git_repo_factory, tmp_path):
    lock = ftp_target.deploy_path / ftp.LOCK_DIR
    lock.mkdir()
    (lock / "info").write_text(
        f"owner=deployment-99\nholder=Bob's deployment\nsince=now\nat={int(time.time())}\n"
    )
    repo = git_repo_factory()
    a = repo.commit(SITE, "A")
    result, _ = _deploy(repo, tmp_path, ftp_server(ftp_target), a, 1)
    assert "locked by another deployment: Bob's deployment" in str(result.servers[0].error)
    assert lock.exists()


def test_fingerprints_are_read_in_any_usual_form():
    digits = "ab" * 32
    expected = "SHA256:" + ":".join(["AB"] * 32)
    assert ftp.normalize_fingerprint(digits) == expected
    assert ftp.normalize_fingerprint("sha256 Fingerprint=" + ":".join(["AB"] * 32)) == expected
    assert ftp.normalize_fingerprint(expected) == expected
    with pytest.raises(InvalidInput) as bad:
        ftp.normalize_fingerprint("SHA256:nope")
    assert bad.value.field == "certificate_fingerprint"


def test_a_dropped_connection_is_retried(ftp_target):
    session = ftp.Session(ftp_target.endpoint(retries=2))
    try:
        assert session.client is not None and session.client.sock is not None
        session.client.sock.shutdown(socket.SHUT_RDWR)  # the connection drops under it
        session.put_bytes("/site/after-drop.txt", b"still here\n")
    finally:
        session.close()
    assert (ftp_target.deploy_path / "after-drop.txt").read_text() == "still here\n"
    assert ftp_target.commands.count("PASS") == 2
