"""The settlement tables (SQLModel, same metadata as the hub's; created by the hub's Alembic
migrations)."""
