"""Policy state behind small interfaces: in this process, or in Redis for every replica, chosen once in
`backends.py`. State modules decide and report; the policies answer bots."""
