"""Events, the sinks that format them, and the record file format."""
