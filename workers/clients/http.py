"""The one choke point for outbound HTTP: every call has a timeout and classed errors."""
import requests

from .base import BackendError

DEFAULT_TIMEOUT = 10.0


class Http:
    """A requests session bound to one base URL, for one named service."""

    def __init__(self, base_url: str, service: str, timeout: float = DEFAULT_TIMEOUT, headers=None):
        self.base_url = base_url.rstrip("/")
        self.service = service
        self.timeout = timeout
        self.session = requests.Session()
        if headers:
            self.session.headers.update(headers)

    def request(self, method: str, path: str, *, timeout: float | None = None, **kwargs) -> requests.Response:
        url = self.base_url + path
        try:
            response = self.session.request(method, url, timeout=timeout or self.timeout, **kwargs)
        except requests.Timeout:
            raise BackendError(f"{self.service} at {self.base_url} did not answer in time", retryable=True,
                               outage=True)
        except requests.ConnectionError:
            raise BackendError(
                f"{self.service} at {self.base_url} is not reachable (is it running?)", retryable=True,
                outage=True)
        if response.status_code >= 500:
            raise BackendError(
                f"{self.service} at {self.base_url} failed with HTTP {response.status_code}", retryable=True,
                outage=True)
        return response

    def json(self, method: str, path: str, **kwargs):
        response = self.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise BackendError(
                f"{self.service} refused {method} {path}: HTTP {response.status_code} {response.text[:300]}",
                retryable=response.status_code in (408, 429),
            )
        return parse_json(response, self.service)


def parse_json(response: requests.Response, service: str):
    try:
        return response.json()
    except ValueError:
        raise BackendError(f"{service} sent a response that is not JSON", retryable=True, outage=True)
