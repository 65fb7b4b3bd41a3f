"""The child of :func:`mai_ops.submissions.archive.unpack_in_child`: unpack one archive.

``python -m mai_ops.submissions.archive_child``, started by
:func:`mai_ops.infra.child.run_child` in the sandbox, with caps on memory, time and
file size. A zip bomb, a decompressor asked for a gigantic dictionary or a directory
built to exhaust ``zipfile`` costs this process, not the worker. Steps: ``unpacked``
(the :class:`~mai_ops.submissions.archive.Submission` as JSON, with its ``root``
relative to ``dest``) then ``done``, or ``error`` with the archive's code.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mai_ops.infra.child import ChildChannel, ChildFailure, serve
from mai_ops.submissions.archive import ArchiveError, ArchiveLimits, unpack_submission


def main() -> int:
    return serve(_unpack)


def _unpack(request: dict[str, Any], channel: ChildChannel) -> None:
    dest = Path(request["dest"])
    try:
        sub = unpack_submission(request["archive"], dest, ArchiveLimits(**request["limits"]))
    except ArchiveError as exc:
        raise ChildFailure(exc.code, exc.message) from None
    channel.send("unpacked", root=sub.root.relative_to(dest).as_posix(), **sub.as_json())


if __name__ == "__main__":
    sys.exit(main())
