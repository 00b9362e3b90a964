"""Reference (a) of benchmarks/detect.py: the HTTP ceiling. The same FastAPI + uvicorn settings as a worker
(uvicorn[standard]: uvloop + httptools, no access log, one process), one POST route that returns a constant
/detect-shaped answer without reading the body.

    python -m benchmarks.trivial_app --port 8090
"""

import argparse

import uvicorn
from fastapi import FastAPI
from fastapi.responses import Response

ANSWER = b'{"scores":[0.123456],"is_anomaly":[false],"threshold":2.5,"model_round":1,"model":"int8"}'


def create_app() -> FastAPI:
    app = FastAPI(title="constant reference")

    @app.post("/detect")
    async def detect():
        return Response(ANSWER, media_type="application/json")

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # the same call as services/worker/__main__.py
    uvicorn.run(create_app(), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
