"""python -m faults: see faults/campaign.py."""

from __future__ import annotations

import sys

from faults.campaign import main

sys.exit(main())
