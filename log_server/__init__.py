"""log_server: the Starlette app, peewee storage, sequencer and scheduled jobs. Builds on tlog
and anchor; nothing imports it but the command line. Filled in by the log-server issue.
"""
