"""Runs queued on Celery (Redis broker) and executed by workers on many machines; the store holds their state."""
