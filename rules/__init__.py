"""Rule and station-registry schema, loader, compiler and the shipped rule packs.

The engine's entry points (see ``rules.api``)::

    registry = load_registry("rules/packs/demo_stations.yaml")
    compiled = load_ruleset(["rules/packs/flood.yaml"], registry)   # raises RulesInvalid
    compiled.ruleset                                        # engine.contracts.ruleset.RuleSet
    check_paths(paths, stations)                                    # problem lines, [] = ok
"""

from rules.api import check_paths, load_ruleset, validate
from rules.cli import check_main
from rules.compiler import Compiled, compile_rules
from rules.errors import Problem, RulesInvalid
from rules.registry import Registry, load_registry
from rules.station import Station

__all__ = [
    "Compiled",
    "Problem",
    "Registry",
    "RulesInvalid",
    "Station",
    "check_main",
    "check_paths",
    "compile_rules",
    "load_registry",
    "load_ruleset",
    "validate",
]
