"""The embedded default stack: an S3-compatible server and an SMTP server on loopback.

Production talks to AWS S3 or MinIO and a real mail relay; on one machine the same
code talks to moto's S3 server over HTTP and to an SMTP server that stores every
message it receives as an ``.eml`` file, so organizers (and tests) can read exactly
what participants would get. Airflow finds both through ``AIRFLOW_CONN_*``
variables built by :func:`connection_env`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import re
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_REGION = "us-east-1"
EMBEDDED_KEY = "mai-ops-local"
EMBEDDED_SECRET = "mai-ops-local-secret"
FROM_EMAIL = "MAI organizers <noreply@mai-challenge.example>"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class LocalS3:
    """moto's S3 server (with its SQS) in a thread, speaking real HTTP on loopback.

    moto keeps everything in memory. With ``state_file`` the buckets, objects (with
    their timestamps), notification settings and queues are loaded from it at start
    and written to it by :meth:`save` and at stop, so a restarted stack finds every
    upload and every sent-email marker where the Airflow database expects them.

    :meth:`outage` and :meth:`arm_outage` take the endpoint down and bring it back with
    the same objects, for fault drills: while it is down, new connections are refused
    and a request arriving on an open connection gets the connection closed unanswered.
    """

    host: str = "127.0.0.1"
    port: int = 0
    state_file: Path | None = None
    _server: Any = field(default=None, repr=False)
    _down: bool = field(default=False, repr=False)
    _armed: tuple[str, float | None] | None = field(default=None, repr=False)
    _back_timer: Any = field(default=None, repr=False)
    _fault_lock: Any = field(default_factory=threading.Lock, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def down(self) -> bool:
        return self._down

    def start(self) -> LocalS3:
        # One access-log line per request would drown the task logs.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        if self.state_file is not None and self.state_file.exists():
            try:
                _restore_moto_state(pickle.loads(self.state_file.read_bytes()))
            except Exception as exc:  # e.g. written by another moto version
                raise RuntimeError(
                    f"cannot load the S3 state {self.state_file} ({exc!r}); remove it together "
                    "with the Airflow database and the outbox (`make clean`) to start afresh"
                ) from exc
        _encode_keys_in_version_listings()
        _anonymous_requests_follow_bucket_policies()
        self.port = self.port or free_port(self.host)
        self._serve()
        return self

    def _serve(self) -> None:
        self._server = _FaultableMotoServer(
            self, ip_address=self.host, port=self.port, verbose=False
        )
        self._server.start()

    def outage(self, seconds: float | None = None) -> None:
        """Go down now, keeping every object in memory; back after ``seconds`` (None: at
        :meth:`back`). Connections are refused meanwhile, open ones closed unanswered."""
        with self._fault_lock:
            if self._down or self._server is None:
                return
            self._down = True
        self._take_down(seconds)

    def _take_down(self, seconds: float | None) -> None:
        with self._fault_lock:
            server, self._server = self._server, None
        log.warning(
            "S3 endpoint %s is down%s",
            self.endpoint_url,
            f" for {seconds:g} s" if seconds is not None else "",
        )
        if server is not None:
            server.stop()  # the listening socket is closed: new connections are refused
        if seconds is not None:
            self._back_timer = threading.Timer(seconds, self.back)
            self._back_timer.daemon = True
            self._back_timer.start()

    def arm_outage(self, request: str, seconds: float | None = None) -> None:
        """Go down right after answering the first request that starts with ``request``
        (``"<METHOD> /<bucket>/<key prefix>"``, path-style as boto3 sends it), e.g. between
        two objects of a copy, for :meth:`outage`'s ``seconds``."""
        self._armed = (request, seconds)

    def back(self) -> None:
        """End an outage: listen again on the same port, with the same objects."""
        with self._fault_lock:
            if self._back_timer is not None:
                self._back_timer.cancel()
                self._back_timer = None
            if not self._down:
                return
            self._down = False
            self._serve()
        log.warning("S3 endpoint %s is back", self.endpoint_url)

    def _armed_for(self, method: str, path: str) -> tuple[str, float | None] | None:
        """The armed outage when this request is the one it waits for (else None): the
        endpoint counts as down from now on, only this request is still answered."""
        with self._fault_lock:
            armed = self._armed
            if armed is None or self._down or not f"{method} {path}".startswith(armed[0]):
                return None
            self._armed, self._down = None, True
        log.warning("S3 endpoint answers %s %s, then goes down as armed", method, path)
        return armed

    def _answered(self, armed: tuple[str, float | None]) -> None:
        self._take_down(armed[1])

    def save(self) -> bool:
        """Write the state file (atomically); False when a request changed it meanwhile."""
        if self.state_file is None:
            return False
        try:
            blob = _dump_moto_state()
        except RuntimeError:  # a dict changed size under a concurrent request: next time
            return False
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        partial = self.state_file.with_name(self.state_file.name + ".partial")
        partial.write_bytes(blob)
        os.replace(partial, self.state_file)
        return True

    def stop(self) -> None:
        with self._fault_lock:
            if self._back_timer is not None:
                self._back_timer.cancel()
                self._back_timer = None
            running, down = self._server, self._down
            self._server, self._down, self._armed = None, False, None
        if running is not None:
            running.stop()
        if running is not None or down:
            # No request can arrive any more: this snapshot is complete.
            if self.state_file is not None and not self.save():
                raise RuntimeError(f"could not write {self.state_file}")

    def client(self) -> Any:
        return s3_client(self.endpoint_url)


def _faultable_server_class():
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    class Handler(MotoRequestHandler):
        owner: LocalS3

        def parse_request(self) -> bool:
            if self.owner.down:  # a request on a connection opened before the outage
                self.close_connection = True
                return False
            return super().parse_request()

        def run_wsgi(self) -> None:
            armed = self.owner._armed_for(self.command, self.path)
            super().run_wsgi()
            if armed:  # answered: from now on nothing else is
                self.owner._answered(armed)

    class Server(ThreadedMotoServer):
        def __init__(self, owner: LocalS3, **kwargs):
            super().__init__(**kwargs)
            self._handler = type("FaultableHandler", (Handler,), {"owner": owner})

        def _server_entry(self) -> None:
            app = DomainDispatcherApplication(create_backend_app)
            self._server = make_server(
                self._ip_address, self._port, app, True, request_handler=self._handler
            )
            self._server_ready_event.set()
            self._server.serve_forever()

    return Server


def _FaultableMotoServer(owner: LocalS3, **kwargs):  # noqa: N802 - a class, built lazily
    """moto's threaded server whose requests :class:`LocalS3`'s fault drills can see."""
    global _SERVER_CLASS
    if _SERVER_CLASS is None:
        _SERVER_CLASS = _faultable_server_class()
    return _SERVER_CLASS(owner, **kwargs)


_SERVER_CLASS = None

# The moto services the stack uses: S3 and the queue its notifications go to.
_PERSISTED_SERVICES = ("s3", "sqs")


def _encode_keys_in_version_listings() -> None:
    """Make moto's ListObjectVersions honour ``encoding-type=url``, as S3 does.

    boto3 always asks for URL-encoded keys in listings; moto encodes them in
    ListObjects but not in ListObjectVersions, so one upload whose key holds a control
    character (which XML cannot carry) made every version listing of the bucket fail:
    one participant's key would stop the freeze for every team.
    """
    from urllib.parse import quote

    from moto.core.responses import ActionResult
    from moto.s3.responses import S3Response

    listing = S3Response.list_object_versions
    if getattr(listing, "encodes_keys", False):
        return

    def list_object_versions(self):
        if self.querystring.get("encoding-type", [None])[0] != "url":
            return listing(self)
        serialized = self.serialized

        def encoded(action: ActionResult):
            result = dict(action.result)
            for entries in ("Versions", "DeleteMarkers"):
                result[entries] = [{**e, "Key": quote(e["Key"])} for e in result[entries]]
            if result.get("CommonPrefixes"):
                result["CommonPrefixes"] = [
                    {"Prefix": quote(p["Prefix"])} for p in result["CommonPrefixes"]
                ]
            for name in ("KeyMarker", "NextKeyMarker", "Prefix"):
                if result.get(name):
                    result[name] = quote(result[name])
            return serialized(ActionResult(result | {"EncodingType": "url"}))

        self.serialized = encoded
        try:
            return listing(self)
        finally:
            del self.serialized

    list_object_versions.encodes_keys = True
    S3Response.list_object_versions = list_object_versions


def _anonymous_requests_follow_bucket_policies() -> None:
    """Make moto refuse an unsigned request unless the bucket's policy allows it, as S3 does.

    moto accepts any request by default, signed or not: anyone on the machine could
    list or write every bucket with plain HTTP. Here a request without credentials (no
    ``Authorization`` header and no presigned-link signature) is answered only when
    the bucket's policy grants that action to everyone (:func:`anonymous_allowed`),
    e.g. ``s3:GetObject`` on the public bucket's objects
    (:func:`mai_ops.infra.storage.public_read_policy`); anything else is refused with
    403 AccessDenied. Signed requests are unchanged (moto does not verify signatures:
    the server listens on loopback only).
    """
    from moto.s3.exceptions import S3AccessDeniedError
    from moto.s3.responses import S3Response

    authorize = S3Response._authenticate_and_authorize_s3_action
    if getattr(authorize, "follows_bucket_policies", False):
        return

    def checked(self, bucket_name: str | None = None, key_name: str | None = None) -> None:
        signed = "Authorization" in self.headers or any(
            name in self.querystring for name in ("X-Amz-Signature", "Signature")
        )
        if not signed:
            action = f"s3:{self.data.get('Action', '')}"
            resource = f"arn:aws:s3:::{bucket_name}" + (f"/{key_name}" if key_name else "")
            policy = None
            if bucket_name:
                try:
                    policy = self.backend.get_bucket(bucket_name).policy
                except Exception:  # noqa: BLE001 - no such bucket: nothing is granted
                    policy = None
            if not policy or not anonymous_allowed(json.loads(policy), action, resource):
                raise S3AccessDeniedError()
        return authorize(self, bucket_name=bucket_name, key_name=key_name)

    checked.follows_bucket_policies = True
    S3Response._authenticate_and_authorize_s3_action = checked


def anonymous_allowed(policy: dict, action: str, resource: str) -> bool:
    """Whether a bucket policy lets anyone (no credentials) do ``action`` on ``resource``.

    The statements that name ``Principal`` ``"*"`` (or ``{"AWS": "*"}``), with
    ``Action`` and ``Resource`` patterns (``*`` and ``?`` wildcards) that match: an
    ``Allow`` grants, a ``Deny`` wins over any grant. A statement with other elements
    (``Condition``, ``NotAction``, ...) grants nothing here, and still denies.
    """
    allowed = False
    statements = policy.get("Statement") or []
    for statement in statements if isinstance(statements, list) else [statements]:
        principal = statement.get("Principal")
        if isinstance(principal, dict):
            principal = principal.get("AWS")
        everyone = principal == "*" or (isinstance(principal, list) and "*" in principal)
        if not (everyone and _matches(statement.get("Action"), action, fold=True)):
            continue
        if not _matches(statement.get("Resource"), resource):
            continue
        plain = set(statement) <= {"Sid", "Effect", "Principal", "Action", "Resource"}
        if statement.get("Effect") == "Deny":
            return False
        allowed = allowed or (statement.get("Effect") == "Allow" and plain)
    return allowed


def _matches(patterns: Any, value: str, fold: bool = False) -> bool:
    for pattern in [patterns] if isinstance(patterns, str) else patterns or []:
        regex = ".*".join(".".join(map(re.escape, p.split("?"))) for p in pattern.split("*"))
        if re.fullmatch(regex, value, re.IGNORECASE if fold else 0):
            return True
    return False


def _moto_backends() -> dict[str, Any]:
    from moto.s3.models import s3_backends
    from moto.sqs.models import sqs_backends

    return {"s3": s3_backends, "sqs": sqs_backends}


class _LockFreePickler(pickle.Pickler):
    """moto's models hold locks and conditions; a restored model gets fresh ones."""

    _FRESH = {
        type(threading.Lock()): threading.Lock,
        type(threading.RLock()): threading.RLock,
        threading.Condition: threading.Condition,
    }

    def reducer_override(self, obj):
        fresh = self._FRESH.get(type(obj))
        return (fresh, ()) if fresh is not None else NotImplemented


def _dump_moto_state() -> bytes:
    state = {
        service: {
            account: {region: dict(vars(backend)) for region, backend in regions.items()}
            for account, regions in backends.items()
        }
        for service, backends in _moto_backends().items()
    }
    buffer = io.BytesIO()
    _LockFreePickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(state)
    return buffer.getvalue()


def _restore_moto_state(state: dict) -> None:
    backends = _moto_backends()
    for service in _PERSISTED_SERVICES:
        for account, regions in state.get(service, {}).items():
            for region, attributes in regions.items():
                vars(backends[service][account][region]).update(attributes)


def _client(service: str, endpoint_url: str) -> Any:
    """A boto3 client of the local server, with its fixed credentials."""
    import boto3

    return boto3.client(
        service,
        endpoint_url=endpoint_url,
        region_name=DEFAULT_REGION,
        aws_access_key_id=EMBEDDED_KEY,
        aws_secret_access_key=EMBEDDED_SECRET,
    )


def s3_client(endpoint_url: str) -> Any:
    return _client("s3", endpoint_url)


def ensure_buckets(s3: Any, names: Iterable[str], versioned: Iterable[str] = ()) -> list[str]:
    """Create the buckets that are missing; return the ones created.

    Each bucket in ``versioned`` (the challenge's submissions bucket) keeps every
    version of its objects, existing buckets included, so the freeze copies exactly the
    version received by the deadline even when it was replaced afterwards.
    """
    from mai_ops.infra.storage import enable_versioning

    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    created = []
    for name in names:
        if name not in existing:
            s3.create_bucket(Bucket=name)
            created.append(name)
    for name in versioned:
        enable_versioning(s3, name)
    return created


def ensure_challenge_buckets(s3: Any, buckets: Any) -> list[str]:
    """A challenge's buckets (its ``buckets``), the submissions bucket versioned, the
    public one readable by anyone (its leaderboards open from a link)."""
    from mai_ops.infra.storage import allow_public_read

    created = ensure_buckets(s3, buckets.model_dump().values(), versioned=[buckets.submissions])
    allow_public_read(s3, buckets.public)
    return created


class _MaildirHandler:
    """aiosmtpd handler: one ``.eml`` file per message, named by its content hash."""

    def __init__(self, folder: Path, refused: set[str]):
        self.folder = folder
        self.refused = refused
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        if address.lower() in self.refused:
            return f"550 5.1.1 <{address}>: recipient address rejected"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
        data = envelope.original_content or envelope.content
        if isinstance(data, str):
            data = data.encode()
        digest = hashlib.sha256(data).hexdigest()[:16]
        with self.lock:
            count = len(list(self.folder.glob("*.eml")))
            path = self.folder / f"{count + 1:06d}-{digest}.eml"
            path.write_bytes(data)
        return "250 Message accepted for delivery"


@dataclass
class LocalSMTP:
    """An SMTP server on loopback that writes every message to ``folder``.

    ``refused``: addresses it rejects at RCPT (550), as a relay rejects an unknown mailbox.
    """

    folder: Path
    host: str = "127.0.0.1"
    port: int = 0
    refused: set[str] = field(default_factory=set)
    _controller: Any = field(default=None, repr=False)
    _back_timer: Any = field(default=None, repr=False)

    def start(self) -> LocalSMTP:
        from aiosmtpd.controller import Controller

        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port(self.host)
        self._controller = Controller(
            _MaildirHandler(self.folder, self.refused), hostname=self.host, port=self.port
        )
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._back_timer is not None:
            self._back_timer.cancel()
            self._back_timer = None
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def outage(self, seconds: float | None = None) -> None:
        """Stop accepting mail now (connections refused), for a fault drill; listen again
        on the same port after ``seconds`` (None: at :meth:`back`). The outbox stays."""
        if self._controller is None:
            return
        log.warning(
            "SMTP server %s:%s is down%s",
            self.host,
            self.port,
            f" for {seconds:g} s" if seconds is not None else "",
        )
        self._controller.stop()
        self._controller = None
        if seconds is not None:
            self._back_timer = threading.Timer(seconds, self.back)
            self._back_timer.daemon = True
            self._back_timer.start()

    def back(self) -> None:
        """End an outage: accept mail again on the same port."""
        if self._controller is None:
            self.start()
            log.warning("SMTP server %s:%s is back", self.host, self.port)


def read_outbox(folder: Path) -> list[EmailMessage]:
    """The messages the local SMTP server stored, oldest first."""
    return [
        message_from_bytes(p.read_bytes(), policy=policy.default)
        for p in sorted(Path(folder).glob("*.eml"))
    ]


def text_part(message: EmailMessage) -> str:
    """The plain-text part of a stored message, as a team's mail client shows it."""
    part = message.get_body(preferencelist=("plain",))
    if part is None:
        raise ValueError(f"no text/plain part in {message['Subject']!r}")
    return part.get_content()


def html_part(message: EmailMessage) -> str:
    """The HTML part of a stored message."""
    part = message.get_body(preferencelist=("html",))
    if part is None:
        raise ValueError(f"no text/html part in {message['Subject']!r}")
    return part.get_content()


def connection_env(s3_endpoint: str, smtp_host: str, smtp_port: int) -> dict[str, str]:
    """``AIRFLOW_CONN_*`` variables for the providers' hooks, in Airflow's JSON form."""
    aws = {
        "conn_type": "aws",
        "login": EMBEDDED_KEY,
        "password": EMBEDDED_SECRET,
        "extra": {"endpoint_url": s3_endpoint, "region_name": DEFAULT_REGION},
    }
    smtp = {
        "conn_type": "smtp",
        "host": smtp_host,
        "port": smtp_port,
        "extra": {
            "from_email": FROM_EMAIL,
            "disable_ssl": True,
            "disable_tls": True,
            "timeout": 30,
            "retry_limit": 3,
        },
    }
    return {
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(aws),
        "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps(smtp),
    }


def sqs_client(endpoint_url: str) -> Any:
    return _client("sqs", endpoint_url)


def ensure_upload_notifications(endpoint_url: str, bucket: str, queue_name: str) -> str:
    """The queue, and the bucket's ObjectCreated notification to it; returns the queue URL.

    The same two calls configure AWS; MinIO and others use their own notification
    targets, and the validation DAG's sweep covers any upload a notification missed.
    """
    s3, sqs = s3_client(endpoint_url), sqs_client(endpoint_url)
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]
        },
    )
    return url
