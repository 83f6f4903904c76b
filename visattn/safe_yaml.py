"""YAML read with bounds (``load_yaml``): every YAML file visattn reads (configs, sweeps, a data set's data.yaml)
goes through it. At the bottom of the package so that the data sets and the config both use it."""

from __future__ import annotations

from typing import Any

import yaml

from visattn.errors import ConfigError

MAX_YAML_BYTES = 4 << 20  # a config, sweep or data.yaml file; real ones are a few kB
MAX_YAML_VALUES = 100_000  # values in a YAML document with every alias (*name) expanded: a bomb stops here


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """Values under ``node`` with every alias expanded (aliases share one node: memoised per node)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:
        raise ConfigError("an alias refers to a value that contains it (a recursive alias)")
    open_nodes.add(key)
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, sizes, open_nodes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, sizes, open_nodes) + _expanded_size(v, sizes, open_nodes)
                       for k, v in node.value)
    else:
        size = 1
    open_nodes.discard(key)
    sizes[key] = size
    if size > MAX_YAML_VALUES:
        raise ConfigError(f"it expands to more than {MAX_YAML_VALUES:,} values through its aliases (*name); "
                          "visattn refuses YAML this large (an alias bomb?)")
    return size


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a document whose aliases expand past ``MAX_YAML_VALUES`` values before
    anything is built from it (a 500-byte alias bomb otherwise costs minutes of CPU and then all memory)."""

    def compose_document(self) -> yaml.Node | None:
        node = super().compose_document()
        if node is not None:
            _expanded_size(node, {}, set())
        return node


def load_yaml(text: str, *, source: str) -> Any:
    """``yaml.safe_load`` with bounds: at most ``MAX_YAML_BYTES`` of text and ``MAX_YAML_VALUES`` values after
    expanding aliases; ConfigError naming ``source`` otherwise (or for invalid YAML)."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"YAML file {source} is {len(text) / 1e6:.1f} MB; visattn reads YAML files of at most "
                          f"{MAX_YAML_BYTES / 1e6:.0f} MB")
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as err:
        raise ConfigError(f"YAML file {source}: {err}") from None
    except RecursionError:
        raise ConfigError(f"YAML file {source} is nested too deeply") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {source} is not valid YAML: {err}") from err
