"""Red team, store/config/plugin loading (round 3): each test failed before its fix."""
import json

import numpy as np
import pytest

from conftest import EXAMPLE
from slidestream.engine import config
from slidestream.engine.errors import ConfigError, StoreError


def _write(tmp_path, text, name="p.json"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# ------------------------------------------------------------------------------------ pipeline files
def test_duplicate_key_is_refused_naming_it(tmp_path):
    """json.loads keeps the last of two equal keys: a pipeline saying magnification 10 and then 40 ran at 40."""
    p = _write(tmp_path, '{"name": "a", "magnification": 10, "tiling": {"name": "grid"}, "magnification": 40}')
    with pytest.raises(ConfigError, match=r"p.json.*key 'magnification' twice"):
        config.load(p)
