"""The monitor: the qualify engine that ties the pure machines, the I/O and the store."""
