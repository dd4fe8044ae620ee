"""Persistence: SQLModel tables and repositories, the typed result schema (``results``), the blob
store, the job queue, migrations.

Every repository function takes the caller's ``company_id`` and the session as keyword arguments;
the caller owns the transaction. No query returns another company's rows.
"""
