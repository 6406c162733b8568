"""The application shell: configuration, server wiring, the CLI, logs, metrics, the OpenBao
launcher.
"""
