"""Where the recorded sample audit files live: in the repository (tests/data/audit-samples/, byte for byte from
their public sources, see its SOURCES.md), so a lone clone has them. ``KAUDIT_SAMPLES`` points elsewhere."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES = Path(os.environ.get("KAUDIT_SAMPLES") or REPO_ROOT / "tests" / "data" / "audit-samples")
