"""Local data of an edge node: SKAB reader, federated scaling statistics, windows of consecutive rows."""
