"""One simulated fleet host: provision a corpus.yaml through the library, print a JSON summary.

    python -m tests.remote.fleet_worker CONFIG [START_AT_EPOCH]

Run as a separate process by the fleet test, so hosts share nothing but the bucket.
"""

from __future__ import annotations

import json
import sys
import time

from provisioning import build_compile_request, build_engine_compiler, load_config


def main(argv: list[str]) -> int:
    config = load_config(argv[1])
    compiler = build_engine_compiler(config)
    request = build_compile_request(config)
    if len(argv) > 2:  # a common start instant, so the hosts really race
        time.sleep(max(0.0, float(argv[2]) - time.time()))
    summary = compiler.compile_engines_for_corpus(request)
    print(json.dumps([{"model": r.model_name, "outcome": r.outcome.value, "source": r.source,
                       "sha256": r.entry.sha256} for r in summary]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
