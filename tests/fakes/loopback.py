"""What every fake shares when it runs as its own process (`python -m tests.fakes.NAME`)."""
import signal
import threading


def serve_until_terminated(server) -> None:
    """Announce the URL (tests wait for this line), serve until SIGTERM or Ctrl-C, then stop."""
    print(f"listening on {server.url}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    server.stop()
