"""Alembic revisions of the store's schema, one per change, applied by ``evalchemy.store.db.upgrade``."""
