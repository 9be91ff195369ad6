"""``python -m laurentnet.bridge`` is the ``laurentnet`` command too."""
import sys

from .cli import main

sys.exit(main())
