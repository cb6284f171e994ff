"""poslab: a fleet of simulated POS terminals in kernel namespaces, for posfleet's demo and tests."""
