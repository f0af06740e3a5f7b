"""Running a plan: the run orchestrator, the worker pool, the lock, notifications, child processes."""
