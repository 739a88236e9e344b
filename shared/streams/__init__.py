"""The streams the engine serves, one subpackage each; `catalog` maps their names to their Stream objects."""
