#!/usr/bin/env bash
# Stop the dockerd that .ci/docker-engine.sh started (by the pid it recorded); any other engine is left alone.
FEDAD_DOCKER_ENGINE_AUTOSTART=0
. "$(dirname "${BASH_SOURCE[0]}")/docker-engine.sh"
docker_engine_stop
