"""The serverless endpoint's price came from one setting (RUNPOD_PRICE_PER_SECOND, the RTX 4090
class). Rows still at that old default now read billing/prices.py for RUNPOD_ENDPOINT_GPU (0 =
from the table); a price staff set by hand stays."""
from decimal import Decimal

from django.db import migrations


def forwards(apps, schema_editor):
    Backend = apps.get_model("routing", "Backend")
    Backend.objects.filter(kind="runpod", price_per_second=Decimal("0.00031")).update(price_per_second=Decimal("0"))


class Migration(migrations.Migration):
    dependencies = [("routing", "0011_price_help")]
    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
