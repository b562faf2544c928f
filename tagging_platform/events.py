"""Event-driven intake: S3 event notifications for the manifest bucket, read from an SQS queue.

SQS delivers at least once, so everything here is built to be repeated safely: a manifest version
is identified by key + ETag (the same run key the listing sensor uses), and a message is deleted
only after the run it asked for has been recorded, never before.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import unquote_plus

from tagging_platform.intake import ManifestObject, is_manifest_key
from tagging_platform.settings import Settings


class NotificationError(ValueError):
    """A queue message that is not an S3 event notification: left for the dead-letter queue."""


@dataclass(frozen=True)
class BadRecord:
    """A record of a notification that is not an S3 event record; its siblings are read all the same."""

    number: int  # 1-based, in the message's Records
    problem: str
    record: object


@dataclass
class Notification:
    """What one notification announces: the manifests created, and the records that could not be read."""

    manifests: list[ManifestObject] = field(default_factory=list)
    bad_records: list[BadRecord] = field(default_factory=list)


@dataclass
class Received:
    """One queue message: what it announces, or why it cannot be read at all."""

    message_id: str
    receipt_handle: str
    receive_count: int
    notification: Notification = field(default_factory=Notification)
    error: str | None = None


def parse_notification(body: str, bucket: str, prefix: str) -> Notification:
    """The manifests created in `bucket` under `prefix` that one notification announces.

    Test events, deletions, other buckets and keys that are not manifests announce nothing. Keys
    arrive URL-encoded, with spaces as "+", exactly as S3 sends them. A notification delivered
    through SNS is unwrapped first. A malformed record is set aside with its number, so that one bad
    record does not keep the good ones beside it from starting; a body that is not a notification
    at all raises NotificationError.
    """
    try:
        message = json.loads(body)
        if isinstance(message, dict) and message.get("Type") == "Notification" and "Message" in message:
            message = json.loads(message["Message"])
    except (TypeError, ValueError, RecursionError) as exc:
        raise NotificationError(f"not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise NotificationError(f"not an S3 event notification: a JSON {type(message).__name__}")
    notification = Notification()
    if message.get("Event") == "s3:TestEvent":
        return notification
    records = message.get("Records")
    if not isinstance(records, list):
        raise NotificationError("not an S3 event notification: no Records")
    for number, record in enumerate(records, start=1):
        try:
            obj = _manifest_created(record)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            problem = f"not an S3 event record: missing or malformed {exc}"
            notification.bad_records.append(BadRecord(number, problem, record))
            continue
        if obj and obj.bucket == bucket and obj.key.startswith(prefix) and is_manifest_key(obj.key) and obj.size:
            notification.manifests.append(obj)
    return notification


def _manifest_created(record: dict) -> ManifestObject | None:
    """The object an ObjectCreated record from S3 announces; None for any other event."""
    if record.get("eventSource") != "aws:s3" or not record["eventName"].startswith("ObjectCreated:"):
        return None
    s3 = record["s3"]
    obj = s3["object"]
    etag = obj.get("eTag") or obj["etag"]
    return ManifestObject(
        s3["bucket"]["name"],
        unquote_plus(obj["key"]),
        etag.strip('"'),
        int(obj.get("size", 0)),
        _epoch(record.get("eventTime", "")),
    )


class ManifestQueue:
    """The SQS queue that the manifest bucket notifies, and its dead-letter queue."""

    def __init__(self, sqs_client, settings: Settings) -> None:
        self.sqs = sqs_client
        self.settings = settings
        self.url = sqs_client.get_queue_url(QueueName=settings.manifest_queue)["QueueUrl"]
        self.dead_letter_url = sqs_client.get_queue_url(QueueName=settings.manifest_dead_letter_queue)["QueueUrl"]

    def receive(self, max_messages: int, budget_s: float) -> list[Received]:
        """Up to `max_messages`, ten at a time (SQS's limit), stopping early when the queue is drained."""
        received: list[Received] = []
        deadline = time.monotonic() + budget_s
        while len(received) < max_messages and time.monotonic() < deadline:
            response = self.sqs.receive_message(
                QueueUrl=self.url,
                MaxNumberOfMessages=min(10, max_messages - len(received)),
                WaitTimeSeconds=0,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            )
            messages = response.get("Messages", [])
            if not messages:
                break
            for message in messages:
                item = Received(
                    message["MessageId"],
                    message["ReceiptHandle"],
                    int(message.get("Attributes", {}).get("ApproximateReceiveCount", 1)),
                )
                try:
                    item.notification = parse_notification(
                        message["Body"], self.settings.manifest_bucket, self.settings.manifest_prefix
                    )
                except NotificationError as exc:
                    item.error = str(exc)
                received.append(item)
        return received

    def delete(self, receipt_handles: list[str]) -> int:
        """Delete handled messages; a handle that expired means SQS will redeliver, which is harmless."""
        deleted = 0
        for start in range(0, len(receipt_handles), 10):
            batch = receipt_handles[start : start + 10]
            response = self.sqs.delete_message_batch(
                QueueUrl=self.url, Entries=[{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(batch)]
            )
            deleted += len(response.get("Successful", []))
        return deleted

    def set_aside(self, message: Received, bad: BadRecord) -> None:
        """Copy a malformed record to the dead-letter queue, saying where it came from, so that none is lost."""
        self.sqs.send_message(
            QueueUrl=self.dead_letter_url,
            MessageBody=json.dumps({"Records": [bad.record]}),
            MessageAttributes={
                "SourceMessageId": {"DataType": "String", "StringValue": message.message_id},
                "RecordNumber": {"DataType": "Number", "StringValue": str(bad.number)},
                "Problem": {"DataType": "String", "StringValue": bad.problem[:1000]},
            },
        )

    def dead_letters(self) -> int:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.dead_letter_url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"])


def configure_notifications(s3_client, sqs_client, settings: Settings) -> str:
    """Create the queue, its dead-letter queue and the bucket's notification (deploy/ does the same on AWS)."""
    dead_letter_url = sqs_client.create_queue(QueueName=settings.manifest_dead_letter_queue)["QueueUrl"]
    dead_letter_arn = _arn(sqs_client, dead_letter_url)
    redrive = {"deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": str(settings.max_receives)}
    url = sqs_client.create_queue(
        QueueName=settings.manifest_queue,
        Attributes={"RedrivePolicy": json.dumps(redrive), "VisibilityTimeout": str(settings.queue_visibility_s)},
    )["QueueUrl"]
    s3_client.put_bucket_notification_configuration(
        Bucket=settings.manifest_bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": _arn(sqs_client, url),
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": settings.manifest_prefix}]}},
                }
            ]
        },
    )
    return url


def _arn(sqs_client, url: str) -> str:
    return sqs_client.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


def _epoch(event_time: str) -> float:
    try:
        return datetime.fromisoformat(event_time).timestamp()
    except ValueError:
        return 0.0
