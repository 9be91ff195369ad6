"""Shared by the ``test_basis_*`` files: ``from basis_fixtures import one_torch_thread``."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One torch thread: these models are tiny, and on a shared machine several threads
    spend more time waiting for each other than computing."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
