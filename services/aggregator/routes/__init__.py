"""The aggregator's HTTP routes, one APIRouter per resource; each handler only translates HTTP to rounds.py calls."""
