"""One module per ``kaudit`` subcommand: argument parsing and wiring only; the work lives in the concept
packages (models, kafka, ingest, agents, sinks, query, web, rbac)."""
