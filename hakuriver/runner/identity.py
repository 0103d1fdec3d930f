"""Who a Docker task runs as, decided on the node.

The submitter's Unix account (`RunRequest.unix_user`) is looked up in this
node's account database (pwd/grp, so NSS sources such as LDAP count) and
the container runs with those numeric ids and supplementary groups: files
a task writes into the shared dir belong to its submitter. A submitter
without an account runs as `nobody`, or as root where the admin chose
`docker.task_user = "root"`. An account this node does not know is refused:
running the task as someone else instead would be a silent surprise.
"""

from __future__ import annotations

import grp
import os
import pwd

from ..errors import ValidationError
from .executors.base import NOBODY, ROOT, TaskIdentity


def docker_identity(unix_user: str | None, task_user: str, *, user: str = "") -> TaskIdentity:
    """The identity a Docker task of `user` (Unix account `unix_user`, or None) runs as here.

    `task_user` is the node's `docker.task_user`. Blocks on the account
    database: call it in a thread."""
    if unix_user is None:
        return ROOT if task_user == "root" else nobody()
    try:
        pw = pwd.getpwnam(unix_user)
    except KeyError:
        who = f" (of HakuRiver user {user!r})" if user else ""
        raise ValidationError(
            f"Unix account {unix_user!r}{who} does not exist on this node; the task would run as its "
            "submitter, so create the account here or correct the user's unix_user"
        ) from None
    try:
        groups = os.getgrouplist(unix_user, pw.pw_gid)
    except OSError:
        groups = [pw.pw_gid]
    extra = tuple(sorted({g for g in groups if g != pw.pw_gid}))
    return TaskIdentity(uid=pw.pw_uid, gid=pw.pw_gid, groups=extra, home=pw.pw_dir or None, name=unix_user)


def nobody() -> TaskIdentity:
    """This node's `nobody` (and its group), or 65534:65534 where it has none."""
    try:
        pw = pwd.getpwnam("nobody")
    except KeyError:
        return NOBODY
    if pw.pw_uid == 0:
        return NOBODY
    gid = pw.pw_gid
    if gid == 0:  # never a root group for the least-privileged account
        gid = _group_id("nogroup", NOBODY.gid)
    return TaskIdentity(uid=pw.pw_uid, gid=gid, name="nobody")


def _group_id(name: str, default: int) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return default
