"""Migrations on real PostgreSQL: round trip with rows present, and no drift from models."""

from __future__ import annotations

import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from alembic import command
from models.tables import Base
from tests.conftest import alembic_config

SCRATCH_DB = "vigil_migrations"


@pytest.fixture
def scratch_url(service_urls):
    admin = create_engine(service_urls["database_admin"], isolation_level="AUTOCOMMIT")
    name = f"{SCRATCH_DB}_{uuid.uuid4().hex[:6]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(service_urls["database"]).set(database=name)
    yield url.render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_upgrade_downgrade_round_trip_with_rows(scratch_url):
    cfg = alembic_config(scratch_url)
    engine = create_engine(scratch_url)
    command.upgrade(cfg, "head")
    with engine.begin() as conn:
        ident = uuid.uuid4()
        conn.execute(text("INSERT INTO identities (id) VALUES (:i)"), {"i": ident})
        conn.execute(
            text("INSERT INTO actors (platform, user_id, identity_id) VALUES ('discord', 'u', :i)"),
            {"i": ident},
        )
        conn.execute(
            text("INSERT INTO dead_letters (task_name, reason, payload) VALUES ('t', 'r', '{}')")
        )
    command.downgrade(cfg, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    command.upgrade(cfg, "head")
    assert {t.name for t in Base.metadata.sorted_tables} <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_models_and_migrations_agree(scratch_url):
    command.upgrade(alembic_config(scratch_url), "head")
    engine = create_engine(scratch_url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        diff = compare_metadata(ctx, Base.metadata)
    engine.dispose()
    assert diff == []
