"""Profile signals: the catalog, the fold of events into profiles, the Redis store."""
