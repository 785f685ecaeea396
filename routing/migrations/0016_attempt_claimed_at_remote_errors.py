# Attempt.polled_at was also the submit's lease and poll_errors also counted submit retries: each
# is renamed for what both its uses share (routing/models.py says why one field serves both).
# RenameField keeps the data, so an attempt mid-submit or mid-poll carries on across the upgrade.
# The index on (status, polled_at) is dropped first and made again on the renamed column: the
# migration state does not carry an index's field list through a rename.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('routing', '0015_fleet'),
    ]

    operations = [
        migrations.RemoveIndex(model_name='attempt', name='routing_att_status_808e43_idx'),
        migrations.RenameField(model_name='attempt', old_name='polled_at', new_name='claimed_at'),
        migrations.RenameField(model_name='attempt', old_name='poll_errors', new_name='remote_errors'),
        migrations.AddIndex(
            model_name='attempt',
            index=models.Index(fields=['status', 'claimed_at'], name='routing_att_status_9413e5_idx'),
        ),
        migrations.AlterField(
            model_name='attempt',
            name='claimed_at',
            field=models.DateTimeField(blank=True, help_text="When a task last claimed it: pending, the submit's lease (a redelivered submit waits SUBMIT_LEASE_SECONDS); sent, the last poll (the sweeper resends a chain silent too long)", null=True),
        ),
        migrations.AlterField(
            model_name='attempt',
            name='remote_errors',
            field=models.PositiveSmallIntegerField(default=0, help_text="Its backend's errors in a row: pending, submits to send again (SUBMIT_RETRIES); sent, failed polls (MAX_POLL_ERRORS)"),
        ),
    ]
