"""boto3 sessions that share one botocore data loader, warmed once per executor worker.

Every S3 client a task makes through the Amazon provider's hook starts a new botocore
session, and each session decodes the S3 service model, its endpoint rules and the
partitions from JSON again: about 0.15 s of CPU per client, several clients per task,
hundreds of tasks in a final phase. The provider already shares one loader between
its async sessions for the same reason (memory); this factory does the same for the
sync ones, and :mod:`mai_ops_airflow.worker_preload` warms it before the executor
forks the tasks, so each task finds the models decoded.

Selected with ``[aws] session_factory = mai_ops_airflow.aws_session.SharedLoaderSessionFactory``
(set by the embedded stack and in ``docker-compose.yaml``). Authentication is the
provider's own: only the basic session (no role to assume) is made differently.
"""

from __future__ import annotations

from typing import Any

import boto3
import botocore.loaders
import botocore.session
from airflow.providers.amazon.aws.hooks.base_aws import BaseSessionFactory

FACTORY = f"{__name__}.SharedLoaderSessionFactory"
_LOADER = botocore.loaders.Loader()


class SharedLoaderSessionFactory(BaseSessionFactory):
    """The provider's session factory, its basic sessions on the shared loader."""

    def _create_basic_session(self, session_kwargs: dict[str, Any]) -> boto3.session.Session:
        session = boto3.session.Session(botocore_session=_core_session(), **session_kwargs)
        # boto3 appends its data folder to the loader's search paths for every session:
        # on a shared loader that list would grow with each one.
        paths = _LOADER.search_paths
        paths[:] = list(dict.fromkeys(paths))
        return session


def _core_session() -> botocore.session.Session:
    core = botocore.session.get_session()
    core.register_component("data_loader", _LOADER)
    return core


def warm() -> None:
    """Decode what an S3 client needs into the shared loader (no network, no credentials)."""
    _core_session().create_client(
        "s3",
        region_name="us-east-1",
        endpoint_url="http://127.0.0.1:9",
        aws_access_key_id="warm",
        aws_secret_access_key="warm",
    )
