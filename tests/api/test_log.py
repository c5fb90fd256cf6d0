"""/api/v1/deployments/<id>/log/: paged by sequence number, complete only at the very end."""

from __future__ import annotations

import pytest

from builds.logs import LOG_PAGE_CHARS
from builds.models import Deployment, LogLine, Status

pytestmark = pytest.mark.django_db


def deployment_with_lines(project, count: int, status: str = Status.SUCCEEDED) -> Deployment:
    deployment = Deployment.objects.create(project=project, status=status, log_seq=count)
    LogLine.objects.bulk_create(
        LogLine(deployment=deployment, seq=seq, stream="stdout", text=f"line {seq}")
        for seq in range(1, count + 1)
    )
    return deployment


def test_it_pages_a_long_log_a_thousand_lines_at_a_time(alice_api, project):
    deployment = deployment_with_lines(project, 1500)
    url = f"/api/v1/deployments/{deployment.pk}/log/"
    first = alice_api.get(url).json()
    assert len(first["lines"]) == 1000 and first["lines"][0]["text"] == "line 1"
    assert first["complete"] is False and first["next_after"] == 1000
    second = alice_api.get(url, {"after": first["next_after"]}).json()
    assert [line["seq"] for line in second["lines"]] == list(range(1001, 1501))
    assert second["complete"] is True and second["next_after"] == 1500
    small = alice_api.get(url, {"after": 10, "limit": 5}).json()
    assert [line["seq"] for line in small["lines"]] == [11, 12, 13, 14, 15]
    assert small["complete"] is False


def test_a_running_deployments_log_is_never_complete(alice_api, project):
    deployment = deployment_with_lines(project, 3, status=Status.RUNNING)
    log = alice_api.get(f"/api/v1/deployments/{deployment.pk}/log/").json()
    assert len(log["lines"]) == 3 and log["complete"] is False
    assert log["status"] == "running"


@pytest.mark.parametrize("after", ["abc", "-1", "1.5", "99999999999999999999999"])
def test_it_refuses_a_bad_after(alice_api, project, after):
    deployment = deployment_with_lines(project, 3)
    response = alice_api.get(f"/api/v1/deployments/{deployment.pk}/log/", {"after": after})
    assert response.status_code == 400
    assert list(response.json()) == ["after"]


def test_it_refuses_a_page_larger_than_a_thousand_lines(alice_api, project):
    deployment = deployment_with_lines(project, 3)
    response = alice_api.get(f"/api/v1/deployments/{deployment.pk}/log/", {"limit": 5000})
    assert response.status_code == 400 and list(response.json()) == ["limit"]


def test_someone_outside_the_project_cannot_read_the_log(charlie_api, project):
    deployment = deployment_with_lines(project, 3)
    assert charlie_api.get(f"/api/v1/deployments/{deployment.pk}/log/").status_code == 404
    assert charlie_api.get("/api/v1/deployments/99999999/log/").status_code == 404


def test_a_page_of_long_lines_stops_at_a_megabyte_of_text_and_the_rest_follows(alice_api, project):
    deployment = Deployment.objects.create(project=project, status=Status.SUCCEEDED, log_seq=40)
    LogLine.objects.bulk_create(
        LogLine(deployment=deployment, seq=seq, stream="stdout", text=f"{seq:02d}" + "x" * 65534)
        for seq in range(1, 41)
    )
    url = f"/api/v1/deployments/{deployment.pk}/log/"
    seen, after, pages = [], 0, 0
    while True:
        page = alice_api.get(url, {"after": after}).json()
        pages += 1
        assert sum(len(line["text"]) for line in page["lines"]) <= LOG_PAGE_CHARS
        seen += [line["seq"] for line in page["lines"]]
        after = page["next_after"]
        if page["complete"]:
            break
    assert seen == list(range(1, 41))
    assert pages == 3  # 16 lines of 64 KiB fill a page
