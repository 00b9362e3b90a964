"""The wire format shared by aggregator and workers: message models and the binary weight codec."""
