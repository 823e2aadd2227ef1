// Benchmarks of the engine against SQLite.
