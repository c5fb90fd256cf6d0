"""`make faults`: the fault-injection campaign against the scaled-out stack (docs/reliability.md)."""
