"""kaudit notify: alerts topic -> Alertmanager, Slack-compatible and generic webhooks (see service.py)."""
