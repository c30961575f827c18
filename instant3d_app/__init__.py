"""The app's service (request checks, output folders, progressive results) and the command-line tools."""
