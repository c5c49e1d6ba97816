"""Command-line programs: one module per command, each with one parser
shared by its ``oxboot SUBCOMMAND`` spelling and its original name."""
