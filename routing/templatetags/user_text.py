"""`{{ text|for_users }}`: an error or reason as a user may see it (routing/errors.py)."""
from django import template

from routing.errors import for_users as _for_users

register = template.Library()


@register.filter
def for_users(text):
    return _for_users(text or "")


@register.filter
def get_item(mapping, key):
    """{{ dict|get_item:key }}: a dict's value by a variable key ("" when absent)."""
    return (mapping or {}).get(key, "")
