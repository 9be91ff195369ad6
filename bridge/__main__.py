"""``python -m bridge`` is the ``laurentnet`` command."""
import sys

from .cli import main

sys.exit(main())
