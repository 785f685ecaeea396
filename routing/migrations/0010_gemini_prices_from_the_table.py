"""The Gemini backend's prices came from one setting ($0.039 per image: gemini-2.5-flash-image's,
not the configured model's). Rows still at those old defaults now read billing/prices.py (0 =
from the table); a price staff set by hand stays."""
from decimal import Decimal

from django.db import migrations

OLD_DEFAULTS = {"price_per_image": Decimal("0.039"), "price_per_video_second": Decimal("0.40")}


def forwards(apps, schema_editor):
    Backend = apps.get_model("routing", "Backend")
    for field, old in OLD_DEFAULTS.items():
        Backend.objects.filter(kind="gemini", **{field: old}).update(**{field: Decimal("0")})


class Migration(migrations.Migration):
    dependencies = [("routing", "0009_unmatched_runs")]
    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
