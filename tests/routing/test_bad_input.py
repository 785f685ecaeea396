"""Bad input gets a 4xx with a clear message and changes nothing: the inputs an adversarial pass
found answering 500 (issue 20)."""
import json

import pytest
from django.test import Client

from routing import tokens
from routing.models import ApiToken, Job

pytestmark = pytest.mark.django_db

SAVE = {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}


@pytest.fixture
def api(alice, local_backend):
    _, key = tokens.token_create(user=alice, name="tests")
    return Client(HTTP_AUTHORIZATION=f"Bearer {key}", raise_request_exception=False)


def _post(client, body: str):
    return client.post("/api/jobs", body, content_type="application/json")


def test_a_non_numeric_token_to_revoke_is_a_message_not_a_500(alice_client, alice):
    tokens.token_create(user=alice, name="kept")
    alice_client.raise_request_exception = False

    for value in ("abc", "1e5", "99999999999999999999999", "-1"):
        response = alice_client.post("/account/tokens/", {"revoke": value}, follow=True)
        assert response.status_code == 200, value
        assert "No such token" in response.content.decode(), value
    assert ApiToken.objects.filter(user=alice).count() == 1


@pytest.mark.parametrize("query", ["offset=1e20", "offset=100000000000000000000", "limit=1e99",
                                   "offset=-5", "limit=99999999999999999999999", "status=%00"])
def test_out_of_range_paging_is_a_4xx_or_an_empty_page_never_a_500(api, query):
    response = api.get(f"/api/jobs?{query}")
    assert response.status_code in (200, 422), (query, response.status_code)
    if response.status_code == 200:
        assert response.json()["results"] == []


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
@pytest.mark.parametrize("raw, what", [(r'"a \ud800 fox"', "lone UTF-16 surrogate"),
                                       (r'"a \u0000 fox"', "NUL character")])
def test_text_that_is_not_text_is_a_422_naming_the_field(api, field, raw, what):
    body = '{"prompt": "a fox", "%s": %s}' % (field, raw) if field != "prompt" else '{"prompt": %s}' % raw

    response = _post(api, body)

    assert response.status_code == 422, response.content
    errors = [e["msg"] for e in response.json()["detail"] if e["loc"][-1] == field]
    # ours, or the schema's own ("unable to parse raw data as a unicode string") for a surrogate
    assert any(what in message or "unicode string" in message for message in errors), errors
    assert not Job.objects.exists()


@pytest.mark.parametrize("raw, what", [
    (r'"\u0000"', "NUL character"),  # PostgreSQL's jsonb cannot store it: a DataError, a 500
    (r'"\ud800"', "lone UTF-16 surrogate"),
])
@pytest.mark.parametrize("where", ["value", "key"])
def test_a_workflow_holding_what_the_database_cannot_store_is_a_422(api, raw, what, where):
    load = '{"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0, ' \
           + ('"note": %s}}' % raw if where == "value" else '%s: 1}}' % raw)
    body = '{"workflow": {"1": %s, "2": %s}}' % (load, json.dumps(SAVE))

    response = _post(api, body)

    assert response.status_code == 422, response.content
    [error] = [e for e in response.json()["detail"] if e["loc"][-1] == "workflow"]
    assert what in error["msg"] and "node 1" in error["msg"].lower(), error
    assert not Job.objects.exists()


def test_the_submit_page_refuses_a_workflow_with_a_nul_character(alice_client, local_backend):
    workflow = '{"1": {"class_type": "EmptyImage", "inputs": {"note": "\\u0000"}}, "2": %s}' % json.dumps(SAVE)

    page = alice_client.post("/submit/", {"kind": "image", "preference": "auto", "width": 512, "height": 512,
                                          "workflow": workflow})

    assert page.status_code == 200 and "NUL character" in page.content.decode()
    assert not Job.objects.exists()


def test_a_workflow_nested_too_deeply_is_a_clear_error_not_a_500(api, alice_client):
    deep = "[" * 5000 + "]" * 5000
    body = '{"workflow": {"1": {"class_type": "EmptyImage", "inputs": {"x": %s}}}}' % deep

    response = _post(api, body)
    page = alice_client.post("/submit/", {"kind": "image", "preference": "auto",
                                          "workflow": '{"1": {"class_type": "EmptyImage", "inputs": {"x": %s}}}' % deep})

    assert response.status_code in (400, 422), response.status_code
    assert page.status_code == 200 and "nested too deeply" in page.content.decode()
    assert not Job.objects.exists()
