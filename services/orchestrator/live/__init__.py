"""Live operation: causal scores, event rules, monitors and the sinks events are delivered to."""
