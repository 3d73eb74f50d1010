"""``python -m visrec.gateway``: the same as ``visrec-gateway``."""

import sys

from visrec.gateway.api.server import main

sys.exit(main())
