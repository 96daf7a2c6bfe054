"""The config model: one declaration per key (settings.py), one loader (loader.py)."""

from llmlbd.config.loader import Backend, Config, ConfigError, config_from_dict, load_config

__all__ = ["Backend", "Config", "ConfigError", "config_from_dict", "load_config"]
