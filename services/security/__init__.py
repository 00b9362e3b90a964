"""Identity, update filters and privacy accounting.

tokens.py      worker bearer tokens: SHA-256 on the aggregator side, constant-time lookup
tls.py         SSL contexts for mutual TLS (uvicorn server side, httpx client side)
certs.py       a CA and per-node certificates for ``make certs`` (the ``cryptography`` library)
filters.py     pluggable stages applied to weights going out or coming in: update-norm clipping, Gaussian noise
accountant.py  (ε, δ) spent by the Gaussian mechanism over rounds, with state_dict / load_state_dict
"""
