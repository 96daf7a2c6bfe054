"""The shared state layer: every key, script and Redis call of llmlbd lives here."""
