"""The ``calsched`` subcommands, by concept; :mod:`calsched.cli` registers them."""
