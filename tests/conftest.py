pytest_plugins = ["fixtures_proxy", "fixtures_simulator", "fixtures_redis", "fixtures_ratelimit"]
