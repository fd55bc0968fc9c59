"""The running collector agent: config, receivers, trace buffer, decision loop, admin API, CLI.

Kept import-light on purpose: ``policies`` and ``storage`` read small modules from here
(durations, errors) while ``collector.config`` reads theirs.
"""
