"""Local data of an edge node: sources configured in config.yaml (tabular files, the synthetic fleet), training-row
policies, the data check, federated scaling statistics, windows of consecutive rows."""
