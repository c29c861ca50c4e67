"""Saved searches (a name for a query, its owner and clusters) stored in ClickHouse, and alerts on them: a saved
search with ``--every/--window/--when`` is evaluated on a schedule and each group crossing the threshold raises an
alert on the alerts topics (``pipeline.searches.alerts``)."""
