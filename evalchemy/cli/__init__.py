"""The command line: click commands, the one renderer of messages and tables, errors to exit codes."""
