"""Storage: settings, the SQLite app database and the on-disk layout. Imports nothing of ours."""
