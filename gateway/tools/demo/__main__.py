"""`python -m gateway.tools.demo` (`make demo`)."""

from __future__ import annotations

import sys

from gateway.tools.demo.run import main

sys.exit(main())
