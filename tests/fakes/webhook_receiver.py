"""A user's webhook receiver on loopback: records every POST and answers `statuses` in turn
(the last one from then on). With `hold` (a threading.Event) set to one, every request waits
for it before the answer: a receiver as slow as the test wants. Requests are served in threads,
so held ones do not queue behind each other."""
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class WebhookReceiver:
    def __init__(self, statuses=(200,), hold: threading.Event | None = None):
        self.calls, self.answered, self.statuses, self.hold = [], [], list(statuses), hold
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append((dict(self.headers), body))
                if receiver.hold is not None:
                    receiver.hold.wait(120)
                status = receiver.statuses.pop(0) if len(receiver.statuses) > 1 else receiver.statuses[0]
                self.send_response(status)
                self.end_headers()
                receiver.answered.append(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        # shutdown() waits for the loop's next poll: half a second, by default, on every test
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"

    def close(self):
        if self.hold is not None:
            self.hold.set()  # held requests answer now, so that nothing waits on this server
        self.server.shutdown()
