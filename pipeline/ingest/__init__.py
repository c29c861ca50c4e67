"""Ingestion: the webhook bridge (``bridge/``), the log-file shipper (``shipper.py``) and the
apiserver-faithful replayer (``replay.py``). All of them write raw records to ``k8s-audit-raw``."""
