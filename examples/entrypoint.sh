#!/bin/sh
# The entrypoint of examples/Dockerfile.start-up: compile or reuse the engines in the mounted
# cache volume, then start the server. The first start on a host compiles; later starts
# verify and reuse (REUSED); containers sharing the volume wait on each other's lock instead
# of building the same engine twice. The config is $PROVISIONING_CONFIG (the image's ENV).
set -e
# exit != 0 stops the container with the reason logged
doit engines
# my_server calls resolve_engine
exec python -m my_server
