"""Tables of this domain (being written)."""

DDL = "SELECT 1"
