"""Models of the project package itself: the encryption canary and the task outbox."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from deployer.crypto import EncryptedTextField


class EncryptionCanary(models.Model):
    """A known value encrypted with the first key, decrypted at every start."""

    value = EncryptedTextField()

    def __str__(self) -> str:
        return "encryption canary"


class OutboxMessage(models.Model):
    """A Celery task message, recorded in the transaction that made its work (a transactional
    outbox: the row commits with the deployment or the delivery, or not at all).

    deployer.outbox sends it: at once when the transaction commits, and again from the relay
    for what the broker could not take then. The Celery task id is ``outbox-<pk>``, so a task
    knows which message started it and marks it consumed.
    """

    #: The Celery task's registered name.
    task = models.CharField(max_length=200)
    #: The task's positional arguments (ids: tasks take ids, never objects).
    args = models.JSONField(default=list)
    #: What the message is for, e.g. "deployment:12": at most one unconsumed message per key.
    key = models.CharField(max_length=200, blank=True, db_index=True)
    created_at = models.DateTimeField(default=timezone.now)
    #: When the broker took it; None while it waits to be sent.
    sent_at = models.DateTimeField(null=True, blank=True)
    #: The Redis server's run_id when it was sent: a different one now means a restarted
    #: broker, which lost the messages it held (Redis without persistence).
    broker_run = models.CharField(max_length=64, blank=True)
    #: When a worker started the task it carries.
    consumed_at = models.DateTimeField(null=True, blank=True)
    #: Which worker consumed it (Celery's hostname).
    consumed_by = models.CharField(max_length=255, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    #: Why the last send failed (the broker's error), for the pending-work page.
    last_error = models.TextField(blank=True)

    class Meta:
        indexes = [
            # The relay's scan: what is still to send, oldest first.
            models.Index(
                fields=["created_at"],
                condition=models.Q(sent_at__isnull=True),
                name="outbox_unsent",
            ),
            # What a worker has not started yet (pending work, lost-message recovery).
            models.Index(
                fields=["key"],
                condition=models.Q(consumed_at__isnull=True),
                name="outbox_unconsumed",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.task}{tuple(self.args)}"

    @property
    def task_id(self) -> str:
        return f"{TASK_ID_PREFIX}{self.pk}"


#: Celery task ids of messages sent from the outbox.
TASK_ID_PREFIX = "outbox-"
