"""The results store: every run's summary, scores, per-subject scores and per-question outcomes in one database
(SQLite by default, PostgreSQL for a shared history), read by ``compare``, ``leaderboard`` and ``history``.

SQLAlchemy Core (one schema on SQLite and PostgreSQL) with Alembic revisions shipped in
``evalchemy/store/migrations`` and applied programmatically: writers upgrade the store, readers only check it.
"""
