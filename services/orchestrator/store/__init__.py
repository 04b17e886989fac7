"""Persistent state of the orchestrator: jobs and their segments, monitors, events, evidence and
undeliverable events. SQLite under --data-dir by default; PostgreSQL when a database URL is given."""
