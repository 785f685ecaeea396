"""The JSON API against its own OpenAPI schema, with schemathesis (property-based, bounded): every
operation, valid and invalid inputs, as a signed-in token holder. No answer may be a 5xx, and
every answer must be one the schema documents, in the shape it documents."""
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from routing import tokens

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]  # 100 examples per operation: minutes


@pytest.fixture
def api_schema(db):
    from django.core.wsgi import get_wsgi_application

    return schemathesis.openapi.from_wsgi("/api/openapi.json", get_wsgi_application())


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture
def bearer(alice, local_backend):
    return {"Authorization": f"Bearer {tokens.token_create(user=alice, name='fuzz')[1]}"}


@schema.parametrize()
@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_no_input_makes_the_api_answer_500_or_off_schema(case, bearer):
    # Every check but "schema-valid data is accepted": a job needs a prompt or a workflow, not
    # both, and a workflow ComfyUI can run; no schema says that, the 422 does.
    case.call_and_validate(headers={**(case.headers or {}), **bearer},
                           excluded_checks=[schemathesis.checks.positive_data_acceptance])
