"""Detection quality on SKAB's protocol: federated vs centralised vs local-only training, fp32 vs int8 ONNX.

runner.py trains and scores all three (the federated one through the aggregator's own Federation class and the
workers' own training, export, quantisation and threshold code) and writes ``results.json`` + ``arrays.npz``;
report.py turns them into one self-contained HTML page with the figures. ``fedad evaluate`` / ``fedad report``
(``make evaluate`` / ``make report``) run them.
"""
