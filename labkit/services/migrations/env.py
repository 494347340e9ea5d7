"""Alembic environment: run on the connection labkit hands over (labkit.services.db.upgrade)."""

from alembic import context

from labkit.services.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # invoked from the alembic command line
    from sqlalchemy import create_engine

    connection = create_engine(context.config.get_main_option("sqlalchemy.url")).connect()

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
