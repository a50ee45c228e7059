"""The monitor's HTTP face: Prometheus metrics, blackbox-style /probe, JSON API, status page."""
