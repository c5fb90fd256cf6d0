import secrets

from django.db import migrations, models

import projects.models


def give_each_project_its_own_token(apps, schema_editor):
    # A callable default would give every existing project the same value.
    Project = apps.get_model("projects", "Project")
    for project in Project.objects.filter(badge_token__isnull=True).only("pk"):
        Project.objects.filter(pk=project.pk).update(badge_token=secrets.token_urlsafe(24))


class Migration(migrations.Migration):

    dependencies = [
        ("projects", "0013_stack_lock_and_freeze_windows"),
    ]

    operations = [
        migrations.AddField(
            model_name="project",
            name="badge_token",
            field=models.CharField(max_length=64, null=True),
        ),
        migrations.RunPython(give_each_project_its_own_token, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="project",
            name="badge_token",
            field=models.CharField(
                default=projects.models.badge_token, max_length=64, unique=True
            ),
        ),
    ]
