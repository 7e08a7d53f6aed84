"""``python -m ws.bench``: the embedded-model bench (:mod:`ws.bench.embedded`)."""

from ws.bench.embedded import main

main()
