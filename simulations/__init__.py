"""Load, scale and micro benchmarks (python -m simulations.<name>)."""


def tune_gc() -> None:
    """Give a load generator the same collector settings as the server processes.

    A load generator holding thousands of sockets pauses for its own full collections (measured in
    W2: stalls of 50-240 ms every few seconds, which showed up as server p99 of 40 ms). The
    measurement must not carry the client's pauses, so benchmarks call this at start."""
    import gc
    gc.set_threshold(50_000, 20, 100)
    gc.freeze()
