"""Sub-commands of the attnhash CLI, one module per command group (see attnhash.cli)."""
