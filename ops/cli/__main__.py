"""`python -m ops.cli`: the `apiworker` command."""

from ops.cli import main

main()
