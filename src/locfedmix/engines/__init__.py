"""The engines in three rooms (docs/architecture.md): flow/ says what a federation does, backends/ how its clients
compute fast, transports/ how messages travel; assemble.py wires one of each for a run."""
