"""Reading a file of training options (``optjax train --config``): JSON or TOML, refused with a
message that names the file and what is wrong with it."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Mapping

from optjax.config import ConfigError

__all__ = ["load_file"]


def load_file(path: str | os.PathLike) -> dict[str, Any]:
    """The options in a JSON (``.json``) or TOML (``.toml``) file, as a mapping (not validated:
    :meth:`TrainConfig.from_dict` does that)."""
    path = pathlib.Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory; pass a .json or .toml file of "
                          "options")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; check the path given to --config")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                raise ConfigError(f"config file {path}: reading TOML needs Python >= 3.11; use a "
                                  ".json file") from None
            options = tomllib.loads(text)
        elif path.suffix == ".json":
            options = json.loads(text)
        else:
            raise ConfigError(f"config file {path}: use a .json or .toml file")
    except (ValueError, json.JSONDecodeError) as err:  # tomllib.TOMLDecodeError is a ValueError
        if isinstance(err, ConfigError):
            raise
        kind = path.suffix[1:].upper()
        raise ConfigError(f"config file {path} is not valid {kind}: {err}") from None
    if not isinstance(options, Mapping):
        raise ConfigError(
            f"config file {path} must hold a table of options, got {type(options).__name__}")
    return dict(options)
