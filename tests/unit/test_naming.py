"""hakuriver.naming: the names HakuRiver gives containers and units, and back."""

from __future__ import annotations

import pytest

from hakuriver import naming


@pytest.mark.parametrize(
    ("name", "task_id"),
    [
        (naming.task_container_name(42), 42),
        ("/" + naming.task_container_name(42), 42),  # Docker's "/name" form
        (naming.task_unit_name(7) + ".service", 7),
        ("hakuriver-task-", None),
        ("hakuriver-task-12x", None),
        ("hakuriver-task-12.scope", None),  # tasks run as services; nothing names a scope
        ("hakuriver-env-base", None),
        ("other-42", None),
    ],
)
def test_task_id_from_name(name: str, task_id: int | None) -> None:
    assert naming.task_id_from_name(name) == task_id
