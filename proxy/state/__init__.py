"""Policy state behind small interfaces: in memory today, shared (Redis) later."""
