"""The dashboard: static single-page app (``static/``) plus widget, drill-down, event and RBAC routes
(``routes.setup``) added to the query API app of ``pipeline.warehouse.api``."""
