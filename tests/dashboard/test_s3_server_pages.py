"""S3 buckets in the dashboard: the form adds one with write-only keys (the id shown
masked, the secret never), keeps stored keys when left blank, and "Test connection" works
against moto's S3 server on loopback."""

from __future__ import annotations

import pytest

from builds.engine.s3 import masked_key_id
from servers.models import Protocol, Server
from tests.dashboard.test_forms import SERVER

pytestmark = pytest.mark.django_db


def _form(target, **fields):
    form = {
        **SERVER,
        "protocol": Protocol.S3,
        "hostname": "",
        "username": "",
        "deploy_path": "",
        "s3_endpoint_url": target.url,
        "s3_region": "eu-west-1",
        "s3_bucket": target.bucket,
        "s3_prefix": "www",
        "s3_path_style": "on",
        "s3_access_key_id": target.server.access_key_id,
        "s3_secret_access_key": target.server.secret_access_key,
        "s3_object_rules": '*.css cache_control="public, max-age=600"',
        "s3_parallel_uploads": "4",
    }
    form.update(fields)
    return form


def test_it_adds_a_bucket_tests_it_and_never_shows_its_secret(alice_client, project, s3_target):
    new = f"/projects/{project.slug}/servers/new/"
    page = alice_client.get(new).content.decode()
    assert 'name="s3_endpoint_url"' in page and 'name="s3_secret_access_key"' in page
    response = alice_client.post(new, _form(s3_target))  # "atomic" still ticked from SSH
    assert response.status_code == 302, response.content.decode()[:3000]
    server = Server.objects.get(name="web2")
    assert (server.protocol, server.atomic, server.s3_prefix) == ("s3", False, "www/")
    assert server.s3_secret_access_key == s3_target.server.secret_access_key
    assert server.hostname == "127.0.0.1" and server.deploy_path == f"/{s3_target.bucket}/www"

    base = f"/projects/{project.slug}/servers/{server.pk}/"
    detail = alice_client.get(base).content.decode()
    tested = alice_client.post(base + "test/").content.decode()
    assert "Connected." in tested and "a test object was written and deleted" in tested
    edit = alice_client.get(base + "edit/").content.decode()
    for page in (detail, tested, edit):
        assert s3_target.server.secret_access_key not in page
        assert s3_target.server.access_key_id not in page
    assert masked_key_id(s3_target.server.access_key_id) in detail + edit

    kept = _form(s3_target, s3_access_key_id="", s3_secret_access_key="", s3_prefix="v2")
    assert alice_client.post(base + "edit/", kept).status_code == 302
    server.refresh_from_db()
    assert server.s3_secret_access_key == s3_target.server.secret_access_key
    assert server.s3_access_key_id == s3_target.server.access_key_id
    assert server.s3_prefix == "v2/"


def test_a_missing_bucket_and_bad_rules_are_named_on_the_form(alice_client, project, s3_target):
    new = f"/projects/{project.slug}/servers/new/"
    page = alice_client.post(new, _form(s3_target, s3_bucket="")).content.decode()
    assert "is required" in page
    page = alice_client.post(new, _form(s3_target, s3_bucket="My_Bucket")).content.decode()
    assert "not a bucket name" in page
    page = alice_client.post(
        new, _form(s3_target, s3_object_rules="*.css acl=everyone")
    ).content.decode()
    assert "acl must be one of" in page
    page = alice_client.post(new, _form(s3_target, s3_secret_access_key="")).content.decode()
    assert "is needed to sign the requests" in page
    assert not Server.objects.filter(name="web2").exists()
