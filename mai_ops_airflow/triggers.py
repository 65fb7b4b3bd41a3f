"""An event trigger that turns S3 upload notifications into asset events.

The submissions bucket sends an ``ObjectCreated`` notification to a queue (SQS, or
the local S3-compatible server's own SQS); this trigger, run by the triggerer,
reads the queue every couple of seconds and fires one event per batch of uploads,
which an ``AssetWatcher`` turns into a run of the validation DAG. Messages are
deleted only after the event is handed over. An upload whose notification is lost
is still found by the validation DAG's periodic sweep.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote_plus

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

log = logging.getLogger(__name__)


def uploads_from_message(body: str) -> list[dict[str, Any]]:
    """The created objects an S3 event notification names (test events give none)."""
    try:
        data = json.loads(body)
    except ValueError:
        return []
    found = []
    for record in data.get("Records", []) if isinstance(data, dict) else []:
        if not str(record.get("eventName", "")).startswith("ObjectCreated"):
            continue
        s3 = record.get("s3", {})
        found.append(
            {
                "bucket": s3.get("bucket", {}).get("name"),
                "key": unquote_plus(s3.get("object", {}).get("key", "")),
                "size": s3.get("object", {}).get("size"),
                "event_time": record.get("eventTime"),
            }
        )
    return found


class UploadQueueTrigger(BaseEventTrigger):
    def __init__(
        self,
        queue_name: str,
        aws_conn_id: str = "aws_default",
        poll_interval: float = 2.0,
        max_messages: int = 10,
    ):
        super().__init__()
        self.queue_name = queue_name
        self.aws_conn_id = aws_conn_id
        self.poll_interval = poll_interval
        self.max_messages = max_messages

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "mai_ops_airflow.triggers.UploadQueueTrigger",
            {
                "queue_name": self.queue_name,
                "aws_conn_id": self.aws_conn_id,
                "poll_interval": self.poll_interval,
                "max_messages": self.max_messages,
            },
        )

    def _client(self):
        from airflow.providers.amazon.aws.hooks.sqs import SqsHook

        return SqsHook(aws_conn_id=self.aws_conn_id).get_conn()

    async def run(self) -> AsyncIterator[TriggerEvent]:
        client, url = None, None
        while True:
            try:
                if client is None:
                    client = await asyncio.to_thread(self._client)
                    response = await asyncio.to_thread(
                        client.get_queue_url, QueueName=self.queue_name
                    )
                    url = response["QueueUrl"]
                response = await asyncio.to_thread(
                    client.receive_message,
                    QueueUrl=url,
                    MaxNumberOfMessages=self.max_messages,
                    WaitTimeSeconds=0,
                )
            except Exception as exc:  # the queue or endpoint is down: wait, never crash
                log.warning("cannot read upload queue %s: %s", self.queue_name, exc)
                client = None
                await asyncio.sleep(max(self.poll_interval, 10.0))
                continue
            messages = response.get("Messages", [])
            uploads = [u for m in messages for u in uploads_from_message(m.get("Body", ""))]
            if uploads:
                yield TriggerEvent({"uploads": uploads})
            if messages:
                entries = [
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(messages)
                ]
                try:
                    await asyncio.to_thread(
                        client.delete_message_batch, QueueUrl=url, Entries=entries
                    )
                except Exception as exc:  # redelivered later: answered once all the same
                    log.warning("cannot delete messages from %s: %s", self.queue_name, exc)
            else:
                await asyncio.sleep(self.poll_interval)
