"""Subcommands of the `vpp` CLI, discovered by module name."""
