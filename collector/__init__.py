"""The running collector agent: config, receivers, trace buffer, decision loop, admin API, CLI."""
