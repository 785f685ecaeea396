"""The project's own deploy checks (`manage.py check --deploy`): a key anyone can read is no key.

Django's security.W009 passes any 50-character key with 5 distinct characters, which the old
published fallback ("insecure-development-key-…") did."""
from django.conf import settings
from django.core.checks import Error

# Keys that have been published (this project's fallbacks, the usual placeholders).
PUBLIC_KEYS = {"insecure-development-key-set-SECRET_KEY-in-production", "changeme", "secret", "change-me"}
MIN_LENGTH, MIN_DISTINCT = 50, 20


def weakness(key: str) -> str:
    """Why a secret key is weak ("" if it is not)."""
    if key == settings.DEVELOPMENT_SECRET_KEY or key in PUBLIC_KEYS or key.startswith("django-insecure-"):
        return "it is a published development key"
    if len(key) < MIN_LENGTH:
        return f"it has {len(key)} characters (at least {MIN_LENGTH})"
    if len(set(key)) < MIN_DISTINCT:
        return f"it uses {len(set(key))} distinct characters (at least {MIN_DISTINCT})"
    return ""


def secret_keys(app_configs=None, **kwargs):
    problems = []
    why = weakness(settings.SECRET_KEY)
    if why:
        problems.append(Error(f"SECRET_KEY is weak: {why}.", id="comfy.E001",
                              hint="Generate one: python -c 'import secrets; print(secrets.token_urlsafe(50))'"))
    if settings.WEBHOOK_SECRET == settings.SECRET_KEY:
        problems.append(Error("WEBHOOK_SECRET equals SECRET_KEY: every webhook receiver would hold the site's key.",
                              id="comfy.E002", hint="Set a separate WEBHOOK_SECRET, or leave it unset (derived)."))
    return problems
