"""RBAC troubleshooting: `kaudit rbac explain` (why was this user denied) and `kaudit rbac suggest` (the
smallest Role/ClusterRole + bindings that would allow exactly those requests)."""
