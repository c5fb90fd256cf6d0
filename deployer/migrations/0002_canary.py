from __future__ import annotations

from django.db import migrations

from deployer.crypto import CANARY_PLAINTEXT


def create_canary(apps, schema_editor):
    canary_model = apps.get_model("deployer", "EncryptionCanary")
    canary_model.objects.get_or_create(pk=1, defaults={"value": CANARY_PLAINTEXT})


class Migration(migrations.Migration):
    dependencies = [("deployer", "0001_initial")]

    operations = [migrations.RunPython(create_canary, migrations.RunPython.noop)]
