"""``python -m pykata.agent``: the same as the kata-agent command."""

import sys

from pykata.agent.main import main

sys.exit(main())
