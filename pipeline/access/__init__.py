"""Who may read what: reader tokens -> (name, role, clusters), their enforcement on every route of the query
API and dashboard, the self-audit of every read (JSON lines + /metrics), and the TLS and token-hash helpers
shared with the bridge."""
