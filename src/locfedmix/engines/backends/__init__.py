"""Execution backends: the looped and stacked client pools and what makes them fast (stacked layers and optimizers,
activation budgets), and the process-wide settings the CLI applies (denormal flushing, host memory)."""
