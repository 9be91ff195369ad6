"""``python -m laurentnet`` is the ``laurentnet`` command."""
import sys

from laurentnet.bridge.cli import main

sys.exit(main())
