"""Response headers the project owns."""
from django.conf import settings


class ContentSecurityPolicy:
    """Sends settings.CONTENT_SECURITY_POLICY on every response that has none: scripts, styles
    and everything else from this site only, no inline code or style attributes, no framing.
    The pages, the admin and the API docs (Swagger UI from the ninja wheel) pass it (a browser
    test collects violations on every page it visits)."""

    def __init__(self, get_response):
        self.get_response = get_response
        self.policy = "; ".join(f"{name} {' '.join(values)}" for name, values in settings.CONTENT_SECURITY_POLICY.items())

    def __call__(self, request):
        response = self.get_response(request)
        if self.policy and "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = self.policy
        return response
