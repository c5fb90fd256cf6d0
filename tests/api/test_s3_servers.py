"""S3 buckets through the API: what may be set, write-only keys (the id masked in answers,
the secret never), the schema, and "Test connection" against moto's S3 server on loopback."""

from __future__ import annotations

import pytest

from builds.engine.s3 import masked_key_id
from servers.models import Server

pytestmark = pytest.mark.django_db


def servers_url(project) -> str:
    return f"/api/v1/projects/{project.slug}/servers/"


def s3_data(target, **fields):
    return {
        "name": "assets",
        "protocol": "s3",
        "s3_endpoint_url": target.url,
        "s3_region": "eu-west-1",
        "s3_bucket": target.bucket,
        "s3_prefix": "/static/",
        "s3_path_style": True,
        "s3_access_key_id": target.server.access_key_id,
        "s3_secret_access_key": target.server.secret_access_key,
        "s3_object_rules": "*.js cache_control=max-age=60",
        "s3_parallel_uploads": 4,
        **fields,
    }


def test_it_adds_a_bucket_with_write_only_keys_and_tests_it(alice_api, project, s3_target):
    response = alice_api.post(servers_url(project), s3_data(s3_target), format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["protocol"] == "s3" and body["atomic"] is False and body["trusted"] is True
    assert body["s3_prefix"] == "static/" and body["s3_bucket"] == s3_target.bucket
    assert body["s3_access_key_id_masked"] == masked_key_id(s3_target.server.access_key_id)
    assert body["s3_secret_access_key_set"] is True
    text = response.content.decode()
    assert s3_target.server.secret_access_key not in text
    assert s3_target.server.access_key_id not in text
    check = alice_api.post(f"{servers_url(project)}{body['id']}/check/", format="json")
    assert check.status_code == 200 and check.json()["ok"] is True, check.content
    listed = alice_api.get(servers_url(project)).content.decode()
    assert s3_target.server.secret_access_key not in listed

    changed = alice_api.patch(
        f"{servers_url(project)}{body['id']}/", {"s3_prefix": "v2"}, format="json"
    )
    assert changed.status_code == 200, changed.content
    server = Server.objects.get()
    assert server.s3_prefix == "v2/"
    assert server.s3_secret_access_key == s3_target.server.secret_access_key


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"s3_bucket": "Not_A_Bucket"}, "s3_bucket"),
        ({"s3_bucket": ""}, "s3_bucket"),
        ({"s3_secret_access_key": ""}, "s3_secret_access_key"),
        ({"s3_endpoint_url": "ftp://example.com"}, "s3_endpoint_url"),
        ({"s3_endpoint_url": "https://key:secret@example.com"}, "s3_endpoint_url"),
        ({"s3_prefix": "../up"}, "s3_prefix"),
        ({"s3_region": "EU WEST"}, "s3_region"),
        ({"s3_object_rules": "*.css storage_class=cold"}, "s3_object_rules"),
        ({"atomic": True}, "atomic"),
        ({"password": "hunter2"}, "password"),
        ({"jump_hostname": "bastion.example.com", "jump_username": "j"}, "jump_hostname"),
    ],
)
def test_it_refuses_what_a_bucket_cannot_be_naming_the_field(
    alice_api, project, s3_target, fields, named
):
    response = alice_api.post(servers_url(project), s3_data(s3_target, **fields), format="json")
    assert response.status_code == 400, response.content
    assert named in response.content.decode()
    assert s3_target.server.secret_access_key not in response.content.decode()
    assert not Server.objects.exists()


def test_the_schema_has_the_bucket_fields_and_no_readable_secret(alice_api):
    schema = alice_api.get("/api/schema/?format=json").json()
    components = schema["components"]["schemas"]
    server = components["Server"]["properties"]
    assert "s3_access_key_id_masked" in server and "s3_bucket" in server
    assert "s3_secret_access_key" not in server and "s3_access_key_id" not in server
    request = next(v for k, v in components.items() if k.startswith("ServerInput"))
    assert {"s3_endpoint_url", "s3_secret_access_key", "s3_object_rules"} <= set(
        request["properties"]
    )
