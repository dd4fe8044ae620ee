"""Replicas starting together migrate one after the other (a PostgreSQL advisory lock)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from vigil.storage.db import Database, alembic_config

MIGRATE = (
    "import sys; from vigil.storage.db import Database, migrate; "
    "migrate(Database(sys.argv[1]).engine)"
)
PROCESSES = 3


@pytest.fixture
def empty_schema(postgres_database: str) -> Iterator[str]:
    schema = f"m_{uuid.uuid4().hex[:12]}"
    plain = postgres_database.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    yield f"{postgres_database}?options=-csearch_path%3D{schema}"
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_processes_migrating_at_once_all_succeed(empty_schema: str) -> None:
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATE, empty_schema],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    for run in runs:
        output, _ = run.communicate(timeout=120)
        assert run.returncode == 0, output
    database = Database(empty_schema)
    try:
        with database.engine.connect() as conn:
            versions = conn.execute(text("SELECT version_num FROM alembic_version")).all()
            tables = set(inspect(conn).get_table_names())
    finally:
        database.dispose()
    head = ScriptDirectory.from_config(alembic_config(empty_schema)).get_current_head()
    assert [row[0] for row in versions] == [head]
    assert {"collection", "collectionface", "facechange", "challenge"} <= tables
