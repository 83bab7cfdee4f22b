"""Small CLI subcommands that belong to no larger concern."""
