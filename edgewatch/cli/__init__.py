"""The command line: `edgewatch report RUN_DIR` and `edgewatch compare RUN_A RUN_B ...`."""
